"""filter_plugins/scram.py against verifiers PostgreSQL 15 computed itself (CREATE ROLE ... PASSWORD).

Same password and salt, same verifier: a role given the filter's output logs in with the
password (the role's login check proves it on every converge).
"""

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("scram", Path(__file__).resolve().parents[1] / "filter_plugins/scram.py")
scram = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(scram)

# password, PostgreSQL's rolpassword (SELECT rolpassword FROM pg_authid).
VECTORS = [
    ("correct horse battery staple",
     "SCRAM-SHA-256$4096:obpT2MKB+5GAPJm0O1bwVA==$SbI0GPtsfK9Lp6b5IympiXeJwGyes5yHb2D6a3UYgWs="
     ":Q8dXUDXmDGCshS+4FjEihonwsl4P7JR6ToM9ZF5EWWY="),
    # SASLprep: a no-break space maps to a space, NFKC turns the ligature into "fi".
    ("pa\u00a0ss\ufb01ne\u00e9",
     "SCRAM-SHA-256$4096:OgkKmhhSwdq3mG5joOLtlw==$bJ++eQc4z+ee3sfdSevqlacYSmRYXb6Egc8yqoyZwSg="
     ":CGlLSq+IM0stznR+xVUswtHWX32+yIPWzmZYv657wuo="),
]


@pytest.mark.parametrize(("password", "stored"), VECTORS)
def test_the_verifier_is_postgresqls(password, stored):
    salt = stored.split("$")[1].split(":")[1]
    assert scram.postgresql_scram_verifier(password, salt=salt) == stored


def test_each_verifier_has_a_new_salt():
    first, second = (scram.postgresql_scram_verifier("correct horse battery staple") for _ in range(2))
    assert first != second and first.startswith("SCRAM-SHA-256$4096:")


def test_the_filter_is_registered():
    assert scram.FilterModule().filters()["postgresql_scram_verifier"] is scram.postgresql_scram_verifier
