#!/usr/bin/env bash
# Mutation testing of the operator's pure core with mutmut 3 (a dev dependency). Not part of CI: it runs the
# covering unit tests once per mutant, minutes to an hour of CPU.
#   scripts/mutation.sh                                  the whole pure core (DEFAULT_TARGETS below)
#   scripts/mutation.sh resilience/ storage/layout.py    only these (paths under operator/kubeforge)
# Environment: MUTATION_JOBS (parallel test processes, default 2), MUTATION_MIN_SCORE (exit 1 below it, default
# 80), MUTATION_WORK_DIR (default build/mutation; it is recreated on each run and keeps the results:
#   cd build/mutation && ../../.venv/bin/mutmut show NAME   shows one mutant's diff).
# The tests run are the fast unit tests that import a pure-core module; mutmut runs, per mutant, only those
# that reach the mutated function.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEFAULT_TARGETS=(controllers/batch.py controllers/conditions.py controllers/finetune.py resilience/ launch/
                 storage/layout.py)
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=("${DEFAULT_TARGETS[@]}")
for target in "${targets[@]}"; do
  if [[ ! -e "${root}/operator/kubeforge/${target}" ]]; then
    echo "no operator/kubeforge/${target}: name files or folders under operator/kubeforge" >&2
    exit 2
  fi
done
mutmut="${root}/.venv/bin/mutmut"
if [[ ! -x "${mutmut}" ]]; then
  echo "mutmut is missing: install the dev dependencies (.venv/bin/pip install -e '.[dev]')" >&2
  exit 2
fi

work="${MUTATION_WORK_DIR:-${root}/build/mutation}"
rm -rf "${work}"
mkdir -p "${work}/src" "${work}/tests/unit"
# mutmut imports the mutated copy from <work>/mutants/src, ahead of the editable install of operator/.
cp -r "${root}/operator/kubeforge" "${work}/src/kubeforge"
find "${work}/src" -name __pycache__ -prune -exec rm -rf {} +
cp "${root}/tests/__init__.py" "${root}/tests/conftest.py" "${work}/tests/"
cp "${root}/tests/unit/__init__.py" "${root}/tests/unit/schemas.py" "${root}/tests/unit/pod_security.py" "${work}/tests/unit/"
cp -r "${root}/tests/unit/golden" "${work}/tests/unit/"
cp -r "${root}/crds" "${root}/examples" "${root}/charts" "${work}/"

tests=()
for test in "${root}"/tests/unit/test_*.py; do
  if grep -qE "kubeforge\.(resilience|launch|storage\.layout|controllers)" "${test}"; then
    cp "${test}" "${work}/tests/unit/"
    tests+=("tests/unit/$(basename "${test}")")
  fi
done

only_mutate=""
for target in "${targets[@]}"; do
  if [[ -d "${root}/operator/kubeforge/${target}" ]]; then
    only_mutate+="\"src/kubeforge/${target%/}/*\", "
  else
    only_mutate+="\"src/kubeforge/${target}\", "
  fi
done
test_list=""
for test in "${tests[@]}"; do test_list+="\"${test}\", "; done

cp "${root}/pyproject.toml" "${work}/pyproject.toml"
cat >> "${work}/pyproject.toml" <<EOF

[tool.mutmut]
source_paths = ["src"]
only_mutate = [${only_mutate}]
do_not_mutate = ["*/__init__.py"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]
pytest_add_cli_args_test_selection = [${test_list}]
also_copy = ["crds", "examples", "charts", "tests/unit/golden"]
use_git_change_detection = false
EOF

cd "${work}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 PATH="${root}/.venv/bin:${PATH}"
export KUBEFORGE_SHARED_DIR="${KUBEFORGE_SHARED_DIR:-$(dirname "${root}")/shared}"
echo "mutating ${targets[*]}; ${#tests[@]} unit test files; work dir ${work}"
nice -n 10 "${mutmut}" run --max-children "${MUTATION_JOBS:-2}" > mutmut-run.log 2>&1 || {
  tail -40 mutmut-run.log >&2
  exit 1
}
"${mutmut}" export-cicd-stats > /dev/null
echo "surviving mutants (cd ${work} && ${mutmut} show NAME for the diff):"
"${mutmut}" results | sort
"${root}/.venv/bin/python" - "${MUTATION_MIN_SCORE:-80}" <<'EOF'
import json, sys

stats = json.load(open("mutants/mutmut-cicd-stats.json"))
tested = stats["total"] - stats["skipped"]
caught = stats["killed"] + stats["timeout"]
score = 100.0 * caught / tested if tested else 0.0
print(f"mutation score {score:.1f}%: {caught} of {tested} mutants killed "
      f"(survived {stats['survived']}, no tests {stats['no_tests']}, suspicious {stats['suspicious']}, "
      f"timeout {stats['timeout']}, skipped {stats['skipped']})")
sys.exit(0 if score >= float(sys.argv[1]) else 1)
EOF
