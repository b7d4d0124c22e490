"""gateway.agentless cookies, users and rate limits: the pieces of sign-in, without I/O."""

import os
import stat

import pytest

from gateway.agentless import cookies, users
from gateway.agentless.ratelimit import FailureLimiter

KEY = b"k" * 32


def test_session_round_trip_and_every_refusal_reason():
    s = cookies.Signer(KEY)
    tok, sess = s.session("alice", "app.mycompany.net", now=1000, ttl=60)
    assert s.open_session_untrusted(tok, "app.mycompany.net", 1001) == sess
    body, mac = tok.split(".")
    forged = cookies._b64(cookies._unb64(body).replace(b"alice", b"admin")) + "." + mac
    cases = {
        "tampered": (forged, "app.mycompany.net", 1001),
        "expired": (tok, "app.mycompany.net", 1060),
        "other-app": (tok, "hr.mycompany.net", 1001),
        "malformed": ("not-a-token", "app.mycompany.net", 1001),
    }
    for why, (t, host, now) in cases.items():
        with pytest.raises(cookies.BadToken) as e:
            s.open_session_untrusted(t, host, now)
        assert e.value.why == why, why
    with pytest.raises(cookies.BadToken) as e:
        cookies.Signer(b"x" * 32).open_session_untrusted(tok, "app.mycompany.net", 1001)
    assert e.value.why == "tampered"
    with pytest.raises(cookies.BadToken) as e:  # a CSRF token is not a session
        s.open_session_untrusted(s.csrf("app.mycompany.net", 1000), "app.mycompany.net", 1001)
    assert e.value.why in ("wrong-kind", "malformed")


@pytest.mark.parametrize("junk", ["", ".", "a.b", "...", "x" * 5000, "é.é", "eyJ9.AAAA", "%%%.%%%"])
def test_junk_tokens_raise_only_badtoken(junk):
    with pytest.raises(cookies.BadToken):
        cookies.Signer(KEY).open_session_untrusted(junk, "app.mycompany.net", 0)


def test_key_file_is_made_0600_and_a_readable_one_refused(tmp_path):
    p = tmp_path / "session.key"
    k = cookies.load_or_create_key(p)
    assert len(k) == 32 and stat.S_IMODE(p.stat().st_mode) == 0o600
    assert cookies.load_or_create_key(p) == k
    os.chmod(p, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        cookies.load_or_create_key(p)


def test_revoked_sessions_are_forgotten_only_after_they_expire():
    r = cookies.Revoked(limit=2)
    r.add("a", expires=10, now=0)
    r.add("b", expires=100, now=0)
    r.add("c", expires=100, now=50)  # full: "a" has expired and goes
    assert "a" not in r and "b" in r and "c" in r


def test_revoked_sessions_survive_a_restart_and_the_journal_forgets_expired_and_junk_lines(tmp_path):
    path = tmp_path / "session.key.revoked"
    r = cookies.Revoked(path=path, now=100)
    r.add("sid-a", 500, 100)
    r.add("sid-b", 150, 100)
    again = cookies.Revoked(path=path, now=120)  # a restart: both still unexpired
    assert "sid-a" in again and "sid-b" in again
    with open(path, "a") as f:
        f.write("garbage\nsid-c notanumber\n")
    later = cookies.Revoked(path=path, now=200)  # sid-b has expired meanwhile
    assert "sid-a" in later and "sid-b" not in later and later.skipped == 2
    assert path.read_text() == "sid-a 500\n" and stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_users_file_scrypt_and_cli_errors(tmp_path):
    p = tmp_path / "users.json"
    store = users.UserStore(p)
    store.add("alice", "correct horse")
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert "correct horse" not in p.read_text() and "scrypt$16384$8$1$" in p.read_text()
    again = users.UserStore(p)
    assert again.verify("alice", "correct horse") and not again.verify("alice", "wrong horse!")
    assert not again.verify("nobody", "correct horse")
    with pytest.raises(users.UserError, match="passwd"):
        again.add("alice", "another one")
    with pytest.raises(users.UserError, match="8 to"):
        again.passwd("alice", "short")
    with pytest.raises(users.UserError, match="letters"):
        again.add("bad name", "long enough")
    again.remove("alice")
    assert not users.UserStore(p).verify("alice", "correct horse")


def test_limiter_per_key_window_and_success():
    lim = FailureLimiter(3, 60)
    for t in (0, 1, 2):
        assert lim.retry_after("user:a", t) == 0
        lim.failure("user:a", t)
    assert lim.retry_after("user:a", 3) == pytest.approx(57)
    assert lim.retry_after("user:b", 3) == 0
    assert lim.retry_after("user:a", 60.5) == 0  # the first failure left the window
    lim.success("user:a")
    assert lim.retry_after("user:a", 3) == 0


def test_limiter_table_is_bounded():
    lim = FailureLimiter(2, 60, max_keys=100)
    for i in range(1000):
        lim.failure(f"addr:{i}", float(i))
    assert len(lim.fails) <= 100


def test_user_cli_add_passwd_remove(tmp_path):
    from click.testing import CliRunner

    from gateway.cli import gateway

    f = str(tmp_path / "users.json")
    run = CliRunner().invoke
    r = run(gateway, ["user", "add", "--users-file", f, "--password-stdin", "alice"], input="first password\n")
    assert r.exit_code == 0 and "added alice" in r.output
    r = run(gateway, ["user", "add", "--users-file", f, "--password-stdin", "alice"], input="first password\n")
    assert r.exit_code != 0 and "ztna gateway user passwd alice" in r.output
    r = run(gateway, ["user", "passwd", "--users-file", f, "--password-stdin", "alice"], input="second password\n")
    assert r.exit_code == 0 and users.UserStore(tmp_path / "users.json").verify("alice", "second password")
    r = run(gateway, ["user", "remove", "--users-file", f, "bob"])
    assert r.exit_code != 0 and "no user bob" in r.output
    r = run(gateway, ["user", "remove", "--users-file", f, "alice"])
    assert r.exit_code == 0 and users.UserStore(tmp_path / "users.json").users == {}
    r = run(gateway, ["user", "add", "--config", str(tmp_path / "none.toml"), "--password-stdin", "x"], input="pw\n")
    assert r.exit_code != 0 and "no such configuration file" in r.output


def test_flooding_the_limiter_with_new_keys_does_not_reset_a_victims_count():
    # Eviction must not let fresh keys push out the key with the most failures (a guesser would
    # flood random user names, then guess the victim's password again).
    lim = FailureLimiter(3, 60, max_keys=8)
    for t in range(3):
        lim.failure("user:victim", t)
    assert lim.retry_after("user:victim", 3) > 0
    for i in range(100):
        lim.failure(f"user:random{i}", 4 + i / 100)
    assert lim.retry_after("user:victim", 5) > 0
    assert len(lim.fails) <= 8
    lim.failure("user:late", 200)  # once the victim's failures have left the window, it may go
    assert lim.retry_after("user:victim", 200) == 0 and len(lim.fails) <= 8


def test_limiter_against_a_naive_count():
    # The sliding window checked against counting every failure ever made, with a seeded RNG.
    import random
    rng = random.Random(7)
    lim, log = FailureLimiter(4, 10, max_keys=10_000), []
    for step in range(2000):
        now, key = step / 10, f"k{rng.randrange(5)}"
        if rng.random() < 0.6:
            lim.failure(key, now)
            log.append((key, now))
        recent = [t for k, t in log if k == key and t > now - 10][-4:]
        want = 0.0 if len(recent) < 4 else recent[0] + 10 - now
        assert abs(lim.retry_after(key, now) - want) < 1e-9


def test_local_passwords_stamp_changes_with_passwd_and_is_none_after_remove(tmp_path):
    from gateway.agentless.auth import LocalPasswords
    p = tmp_path / "users.json"
    cli = users.UserStore(p)
    cli.add("alice", "correct horse")
    backend = LocalPasswords(users.UserStore(p))  # the running gateway's own copy
    first = backend.stamp("alice")
    assert first and backend.stamp("alice") == first and "correct" not in first
    assert backend.stamp("nobody") is None
    cli.passwd("alice", "battery staple")  # another process: the gateway sees it by the file's mtime
    assert backend.stamp("alice") not in (None, first)
    cli.remove("alice")
    assert backend.stamp("alice") is None
