"""The documentation says what the code does (issue 21): KIC's settings, the Secret's interoperation, the order
of licenses and the restore, which license source wins."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from license_keeper.cli import main

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
OPERATIONS = ROOT / "docs" / "operations.md"
INTERFACES = ROOT / "docs" / "interfaces.md"
DOCS = [README, OPERATIONS, INTERFACES, ROOT / "docs" / "architecture.md", ROOT / "charts/license-keeper/README.md"]


def section(path: Path, heading: str) -> str:
    """The text under a markdown heading (up to the next heading of the same or a higher level); lines in
    fenced code blocks (a shell comment, a YAML comment) are never headings."""
    lines = path.read_text().splitlines(keepends=True)
    fenced, start, level = False, None, 0
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"^(#+) (.*?)\s*$", line)
        if not match:
            continue
        if start is None:
            if match.group(2) == heading:
                start, level = i + 1, len(match.group(1))
        elif len(match.group(1)) <= level:
            return "".join(lines[start:i])
    assert start is not None, f"{path.name} has no section {heading!r}"
    return "".join(lines[start:])


def table_rows(text: str) -> dict[str, str]:
    """First-column code name -> the whole row, for markdown table rows like | `NAME` | ... |."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\|\s*`([^`]+)`\s*\|", line)
        if m:
            rows[m.group(1)] = line
    return rows


def help_texts() -> str:
    runner = CliRunner()
    out = [runner.invoke(main, ["--help"], terminal_width=200).output]
    for command in ("run", "status", "validate", "sync", "export", "restore"):
        out.append(runner.invoke(main, [command, "--help"], terminal_width=200).output)
    return "\n".join(out)


# --- KIC's Konnect settings ---------------------------------------------------------------------------------


def test_every_kic_konnect_setting_is_documented_with_what_the_keeper_does_with_it() -> None:
    from license_keeper.config import KIC_KONNECT_SETTINGS

    rows = table_rows(section(INTERFACES, "KIC's Konnect settings"))
    assert set(rows) == set(KIC_KONNECT_SETTINGS)
    for name, setting in KIC_KONNECT_SETTINGS.items():
        row = rows[name]
        if setting.keeper:
            assert setting.keeper in row, (name, setting.keeper)
        else:
            assert "not used" in row, name


# --- what reads the keeper's Secret ----------------------------------------------------------------------------

FALSE_CLAIM = re.compile(r"(?i)\b(?:by|for) (?:kong ingress controller|kic)\b[^.\n]{0,12}\(keys")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_document_claims_kic_reads_the_keepers_secret(path: Path) -> None:
    """KIC only ever reads konnect-license-<control-plane-id>; the keeper writes <controller-name>-license."""
    text = " ".join(path.read_text().split())
    assert not FALSE_CLAIM.search(text), FALSE_CLAIM.search(text)


def test_no_help_text_claims_kic_reads_the_keepers_secret() -> None:
    text = " ".join(help_texts().split())
    assert not FALSE_CLAIM.search(text), FALSE_CLAIM.search(text)


def test_the_secret_section_says_precisely_what_interoperates() -> None:
    from license_keeper.policy import KIC_MANAGED_BY_LABEL, KIC_SECRET_PREFIX

    text = section(INTERFACES, "Secret")
    for needle in ("KONG_LICENSE_DATA", f"{KIC_SECRET_PREFIX}<control-plane-id>", KIC_MANAGED_BY_LABEL, "never"):
        assert needle in text, needle


def test_every_annotation_the_keeper_writes_or_reads_is_documented() -> None:
    from license_keeper import policy

    text = section(INTERFACES, "Secret")
    names = [getattr(policy, n) for n in dir(policy) if n.endswith("_ANNOTATION")]
    assert len(names) >= 5
    for name in names:
        assert f"`{name}" in text, name


# --- the order of licenses and the restore ---------------------------------------------------------------------


def test_the_order_is_documented_rule_by_rule() -> None:
    from license_keeper.policy import RULES

    text = " ".join(section(OPERATIONS, "Rotation").split())
    for rule in RULES:
        assert f"`{rule.name}`" in text, rule.name
    assert "restored-at" in text


def test_the_expiry_runbook_restores_kongs_file_and_says_it_sticks() -> None:
    text = " ".join(section(OPERATIONS, "LicenseKeeperLicenseExpiryCritical").split())
    assert "license-keeper restore -f" in text
    assert "Kong" in text and "--force" in text
    assert "LicenseRestored" in text


def test_which_license_source_wins_is_documented() -> None:
    text = " ".join(section(OPERATIONS, "Which license a gateway runs").split())
    for needle in (
        "KONG_LICENSE_DATA",
        "--konnect-licensing-enabled",
        "KongLicense",
        "/config",
        "/licenses",
        "restart",
        "admin-api",
        "konglicense",
    ):
        assert needle in text, needle


# --- the path from nothing to licensed gateways (issue 21 #5) --------------------------------------------------

CHANGELOG = ROOT / "CHANGELOG.md"
CHART = ROOT / "charts" / "license-keeper"
# The sections a new user follows, where every chart value of the keeper's they name must exist.
INSTALL_PATH = (
    "From nothing to licensed gateways",
    "Install",
    "Behind an egress proxy: `HTTPS_PROXY` and `NO_PROXY`",
    "Wire Kong to the Secret",
    "Rotations: a restart target, or Reloader",
    "KIC's own Konnect licensing: turn it off or keep it",
    "Upgrading",
    "Uninstalling: what `helm uninstall` leaves behind",
)
# YAML blocks in those sections that are Kong's chart values or RBAC, not this chart's: their first line says so.
FOREIGN_BLOCK = re.compile(r"^\s*#\s*(kong/|a Role)")


def _schema() -> dict[str, object]:
    import json

    return json.loads((CHART / "values.schema.json").read_text())


def _resolve(schema: dict[str, object], root: dict[str, object], path: list[str]) -> bool:
    """Whether ``path`` names a value the chart's schema accepts (helm refuses unknown values: additionalProperties
    is false). A free-form map (no properties) or a list accepts anything below it."""
    node: object = root
    for key in path:
        if not isinstance(node, dict):
            return True
        ref = node.get("$ref")
        if isinstance(ref, str):
            node = schema["definitions"][ref.rsplit("/", 1)[1]]  # type: ignore[index]
            assert isinstance(node, dict)
        props = node.get("properties")
        if not isinstance(props, dict):
            return True
        if key not in props:
            return bool(node.get("additionalProperties"))  # absent or false: not accepted here
        node = props[key]
    return True


def _leaf_paths(value: object, prefix: list[str]) -> list[list[str]]:
    if isinstance(value, dict) and value:
        out: list[list[str]] = []
        for key, sub in value.items():
            out += _leaf_paths(sub, [*prefix, str(key)])
        return out
    return [prefix]


def chart_values_named_in_the_install_path() -> set[str]:
    import yaml

    schema = _schema()
    top = set(schema["properties"])  # type: ignore[arg-type]
    text = "\n".join(section(OPERATIONS, heading) for heading in INSTALL_PATH)
    names: set[str] = set()
    for name in re.findall(r"--set ([\w.]+)=", text):
        names.add(name)
    for name in re.findall(r"`([A-Za-z]\w*(?:\.\w+)+)(?:=[^`]*)?`", text):
        if name.split(".")[0] in top:
            names.add(name)
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        if FOREIGN_BLOCK.match(block):
            continue
        for path in _leaf_paths(yaml.safe_load(block), []):
            names.add(".".join(path))
    return names


def test_the_install_path_names_the_keepers_chart_values_it_should() -> None:
    """The check below must see the values the path is about (else it would pass on nothing)."""
    names = chart_values_named_in_the_install_path()
    for needle in (
        "konnect.address",
        "konnect.controlPlaneId",
        "konnect.tlsSecretName",
        "delivery.restart.deployments",
        "networkPolicy.konnect.cidrs",
        "licenseSecret.create",
    ):
        assert needle in names, needle
    assert not any(n.startswith(("enterprise.", "gateway.", "controller.")) for n in names), names


def test_every_chart_value_named_in_the_install_path_exists_in_the_chart() -> None:
    import yaml

    schema = _schema()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = []
    for name in sorted(chart_values_named_in_the_install_path()):
        path = name.split(".")
        node: object = values
        in_values = True
        for key in path:
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif not isinstance(node, dict) or not node:  # a list, or a free-form map such as labels: {}
                break
            else:
                in_values = False
                break
        if not (in_values or _resolve(schema, schema, path)):
            missing.append(name)
    assert not missing, f"docs/operations.md names chart values the chart does not have: {missing}"


def test_the_changelog_has_a_section_for_the_current_version() -> None:
    from license_keeper import __version__

    text = CHANGELOG.read_text()
    match = re.search(rf"^## {re.escape(__version__)}\b.*$", text, re.M)
    assert match, f"CHANGELOG.md has no '## {__version__}' section"
    body = section(CHANGELOG, match.group(0)[3:].strip())
    assert "Upgrade notes" in body
    chart = (CHART / "Chart.yaml").read_text()
    assert f"\nversion: {__version__}\n" in chart


def test_the_upgrade_section_points_at_the_changelog() -> None:
    assert "CHANGELOG.md" in section(OPERATIONS, "Upgrading")


def test_the_readme_links_the_path_from_install_and_using_it() -> None:
    for heading in ("Install", "Using it"):
        assert "docs/operations.md#path" in section(README, heading), heading
    assert '<a id="path"></a>' in OPERATIONS.read_text()


def test_the_proxy_section_names_each_client_as_the_code_builds_it() -> None:
    """Konnect honours the proxy variables; the Kubernetes and Admin API clients do not
    (behaviour: test_konnect.py, test_proxy_env.py)."""
    src = ROOT / "src" / "license_keeper"
    assert "trust_env=True" in (src / "konnect.py").read_text()
    assert (src / "kube.py").read_text().count("trust_env=False") == 2
    assert "trust_env=False" in (src / "adminapi.py").read_text()
    text = " ".join(section(OPERATIONS, "Behind an egress proxy: `HTTPS_PROXY` and `NO_PROXY`").split())
    for needle in ("| Konnect (aiohttp, `trust_env`) | **honoured**", "`trust_env=False`) | **ignored**", "http://"):
        assert needle in text, needle
