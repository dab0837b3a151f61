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
    """The text under a markdown heading (up to the next heading of the same or a higher level)."""
    text = path.read_text()
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.M)
    assert match, f"{path.name} has no section {heading!r}"
    level = len(match.group(1))
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


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
