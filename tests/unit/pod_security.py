"""The restricted Pod Security Standard (https://kubernetes.io/docs/concepts/security/pod-security-standards/,
policy version v1.27 to latest) as the API server's PodSecurity admission checks a pod template: the baseline
controls, then the restricted ones. `violations(pod_spec)` lists what a namespace labelled
`pod-security.kubernetes.io/enforce: restricted` would refuse."""

from __future__ import annotations

from typing import Any

BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUME_SOURCES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                             "projected", "secret"}


def _containers(pod: dict) -> list[dict]:
    return [*(pod.get("initContainers") or []), *(pod.get("containers") or []),
            *(pod.get("ephemeralContainers") or [])]


def violations(pod: dict[str, Any]) -> list[str]:
    """What the restricted profile refuses in this PodSpec, one line per control and place."""
    found: list[str] = []
    pod_sc = pod.get("securityContext") or {}
    containers = _containers(pod)
    # ---- baseline
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            found.append(f"host namespaces: {field}")
    if pod_sc.get("windowsOptions", {}).get("hostProcess"):
        found.append("hostProcess: pod")
    for volume in pod.get("volumes") or []:
        if "hostPath" in volume:
            found.append(f"hostPath volume {volume.get('name')}")
        sources = set(volume) - {"name"}
        if not sources <= RESTRICTED_VOLUME_SOURCES:
            found.append(f"volume types: {volume.get('name')} uses {sorted(sources - RESTRICTED_VOLUME_SOURCES)}")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"sysctl {sysctl.get('name')}")
    if pod_sc.get("seLinuxOptions", {}).get("type", "") not in SELINUX_TYPES:
        found.append("seLinuxOptions.type: pod")
    if pod_sc.get("seLinuxOptions", {}).get("user") or pod_sc.get("seLinuxOptions", {}).get("role"):
        found.append("seLinuxOptions user/role: pod")
    if (pod_sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        found.append("appArmorProfile Unconfined: pod")
    # ---- restricted: pod-level settings count for containers that do not set their own
    if pod_sc.get("runAsNonRoot") is False:
        found.append("runAsNonRoot false: pod")
    if pod_sc.get("runAsUser") == 0:
        found.append("runAsUser 0: pod")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in ("RuntimeDefault", "Localhost"):
        found.append(f"seccompProfile {pod_seccomp}: pod")
    for c in containers:
        where = f"container {c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            found.append(f"privileged: {where}")
        if sc.get("windowsOptions", {}).get("hostProcess"):
            found.append(f"hostProcess: {where}")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                found.append(f"hostPort {port['hostPort']}: {where}")
        if sc.get("procMount", "Default") != "Default":
            found.append(f"procMount: {where}")
        if sc.get("seLinuxOptions", {}).get("type", "") not in SELINUX_TYPES:
            found.append(f"seLinuxOptions.type: {where}")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            found.append(f"appArmorProfile Unconfined: {where}")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"allowPrivilegeEscalation must be false: {where}")
        run_as_non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if run_as_non_root is not True:
            found.append(f"runAsNonRoot must be true (pod or container): {where}")
        if sc.get("runAsUser") == 0:
            found.append(f"runAsUser 0: {where}")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"seccompProfile must be RuntimeDefault or Localhost (pod or container): {where}")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"capabilities must drop ALL: {where}")
        added = set(capabilities.get("add") or [])
        if added - {"NET_BIND_SERVICE"}:
            found.append(f"capabilities added {sorted(added - {'NET_BIND_SERVICE'})}: {where}")
        if added - BASELINE_CAPABILITIES:
            found.append(f"non-baseline capabilities {sorted(added - BASELINE_CAPABILITIES)}: {where}")
    return found
