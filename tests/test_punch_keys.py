"""Access keys: rendezvous identifier, --generate-key, --key-file, warnings (punch.keys, CLI)."""

from __future__ import annotations

import hashlib
import math
import secrets

import pytest
from click.testing import CliRunner

from stunturn_diag.cli import main
from stunturn_diag.sansio.punch import keys


def test_the_rendezvous_identifier_is_scrypt_of_the_key_under_its_label():
    rv = keys.rendezvous_id("some-access-key")
    assert rv == hashlib.scrypt(b"some-access-key", salt=b"stunturn-rendezvous/v1", n=2 ** 15,
                                r=8, p=1, maxmem=64 << 20, dklen=32).hex()
    assert len(rv) == 64 and rv != keys.rendezvous_id("some-access-kez")
    assert rv == keys.rendezvous_id(b"some-access-key")
    assert "some-access-key".encode().hex() not in rv


def test_generated_keys_are_128_bit_base32_and_fresh():
    got = {keys.generate_key(secrets.token_bytes) for _ in range(50)}
    assert len(got) == 50
    for key in got:
        assert len(key) == 26 and set(key) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
        assert keys.key_warnings(key) == []
    assert keys.generate_key(lambda n: bytes(n)) == "A" * 26


@pytest.mark.parametrize("weak", ["password1", "letmein!", "hunter2hunter2", "aaaaaaaaaaaaaaaaaaaa",
                                  "qwerty123456", "Summer2024", "shared-secret"])
def test_short_or_dictionary_like_keys_are_warned(weak):
    warnings = keys.key_warnings(weak)
    assert len(warnings) == 1 and "--generate-key" in warnings[0]


@pytest.mark.parametrize("strong", ["J8x#kq2Lm9pZ4vR7", "vq3t-8zrn-x4kw-p2mh-c7jd"])
def test_random_looking_keys_pass(strong):
    assert keys.estimate_bits(strong) >= keys.WEAK_BITS


def test_the_estimate_is_length_times_charset_for_random_text():
    assert keys.estimate_bits("x7k2q9") == pytest.approx(6 * math.log2(36))


# --- the CLI -------------------------------------------------------------------------------

def test_generate_key_prints_a_key_and_exits_without_a_server():
    result = CliRunner().invoke(main, ["punch", "--generate-key"])
    assert result.exit_code == 0, result.output
    key = result.output.strip()
    assert len(key) == 26 and keys.key_warnings(key) == []


def _punch(args, env=None):
    # nothing listens on port 9 of loopback: the run fails right after reading the key
    return CliRunner().invoke(main, ["punch", "http://127.0.0.1:9", "-q", *args], env=env or {})


def test_key_on_the_command_line_warns_about_ps():
    result = _punch(["--key", "J8x#kq2Lm9pZ4vR7"])
    assert "--key shows the access key in the process list" in result.output


def test_key_file_and_env_do_not_warn_about_ps(tmp_path):
    path = tmp_path / "key"
    path.write_text("J8x#kq2Lm9pZ4vR7\n")
    for result in (_punch(["--key-file", str(path)]), _punch([], env={"STUNTURN_KEY": "J8x#kq2Lm9pZ4vR7"})):
        assert "process list" not in result.output and "weak" not in result.output
        assert "cannot reach the signaling server" in result.output, result.output


def test_weak_key_gets_a_warning_on_stderr(tmp_path):
    path = tmp_path / "key"
    path.write_text("password1\n")
    assert "the access key looks weak" in _punch(["--key-file", str(path)]).output


def test_missing_or_bad_key_sources_are_clear_errors(tmp_path):
    assert "no access key" in _punch([]).output
    assert "cannot read the key file" in _punch(["--key-file", str(tmp_path / "nope")]).output
    two = tmp_path / "two"
    two.write_text("line one\nline two\n")
    assert "on one line" in _punch(["--key-file", str(two)]).output
