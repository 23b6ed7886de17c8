"""An import-linter contract type for rules that hold for a package except for some of its modules.

import-linter's expressions cannot say "every module under kubeforge.controllers but the kopf layer"
(a wildcard replaces a whole name, and there is no exclusion), yet the rule must keep holding as
modules are added: any new module is a reconcile module unless its name marks it as the I/O layer.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from importlinter.contracts.forbidden import ForbiddenContract
from importlinter.domain import fields
from importlinter.domain.contract import ContractCheck, InvalidContractOptions
from importlinter.domain.helpers import module_expressions_to_modules
from importlinter.domain.imports import ModuleExpression


class ForbiddenExceptContract(ForbiddenContract):
    """A forbidden contract whose source modules leave out those matching `exempt_modules`
    (shell-style patterns on full module names, e.g. `kubeforge.controllers.kopf_*`).

    Exempt modules are only left out as importers: a source module that reaches a forbidden module
    through an exempt one still breaks the contract. Sources are modules, not packages
    (`as_packages` must be false), so name packages' contents with `.**`.
    """

    type_name = "forbidden_except"

    exempt_modules = fields.SetField(subfield=fields.StringField(), required=False)

    def validate(self) -> None:
        if str(self.as_packages).lower() != "false":
            raise InvalidContractOptions({"as_packages": "forbidden_except needs as_packages = false "
                                                          "(list packages' contents with `.**`)."})

    def check(self, graph, verbose: bool) -> ContractCheck:
        patterns = self.exempt_modules or set()
        sources = module_expressions_to_modules(graph, self.source_modules)
        expressions = self.source_modules
        self.source_modules = {ModuleExpression(module.name) for module in sources
                               if not any(fnmatchcase(module.name, pattern) for pattern in patterns)}
        try:
            return super().check(graph, verbose)
        finally:
            self.source_modules = expressions
