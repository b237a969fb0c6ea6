"""A real relay and bounce mailbox for the tests: a private Postfix instance and a private Dovecot (needs root).

MtaBed starts, from a temp directory of its own and on free 127.0.0.1 ports:
- Postfix (`postfix -c DIR start`, its own config_directory, queue and log): the relay herald-smtp talks to,
  submission with STARTTLS and SASL AUTH (Dovecot's auth service) for one user, DSN offered as Postfix does.
  It relays example.org to the test's next hop (127.0.0.1:next_hop_port, no DNS) and delivers the bounce
  address (bounces@example.com) to a Maildir, with virtual(8).
- Dovecot (`dovecot -c CONF`): IMAP with STARTTLS (plain IMAP on connect, LOGIN only after STARTTLS) for the
  bounce mailbox, a passwd-file user, mail_location that Maildir.
Fixtures (tests/conftest.py imports them): `mta_next_hop`, the aiosmtpd SmtpTestServer the bed relays example.org
to (inject its refusals), and `mta`, the running MtaBed. Other settings: running_mta(port, main_cf={...}).
Both certificates come from one trustme CA (ca_file). stop_mta() runs `postfix -c DIR stop` and `doveadm -c CONF
stop` and waits for both masters to be gone; nothing is left running, the system's own instances (and port
25) are never touched. Anything that cannot start raises RuntimeError with the tool's output and log: the
test fails, never skips.

The temp directory is a fresh mkdtemp under /tmp, not pytest's tmp_path: Postfix's and Dovecot's unprivileged
processes must reach their queue and sockets, and pytest's base temp directory is private to root (0700).
Postfix retries every second (queue_run_delay, backoff times), so a deferred mail is tried again at once;
`main_cf` adds or overrides main.cf settings (e.g. delay_warning_time, maximal_queue_lifetime).
HERALD_KEEP_MTA=1 in the environment keeps the temp directory (configs, maillog, dovecot.log) after stop.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .net import LOCALHOST, free_port
from .smtp_server import SmtpTestServer

MTA_HOSTNAME = "mta.herald.test"
BOUNCE_ADDRESS = "bounces@example.com"
RELAY_DOMAIN = "example.org"  # relayed to the next hop
SMTP_USER = "herald@example.com"
SMTP_PASSWORD = "relay-pa55word-for-tests"
IMAP_PASSWORD = "imap-pa55word-for-tests"
MAIL_UID = 65534  # nobody: owns the Maildir; virtual(8) and Dovecot's imap both run as it
START_TIMEOUT = 15.0


@dataclass
class MtaBed:
    """A running Postfix + Dovecot pair: where to send, where the bounces are read."""

    root: Path
    smtp_host: str
    smtp_port: int
    smtp_user: str
    smtp_password: str = field(repr=False)
    imap_host: str
    imap_port: int
    imap_user: str
    imap_password: str = field(repr=False)
    imap_mailbox: str
    bounce_address: str
    next_hop_port: int
    ca_file: str  # trusts both the submission port's and the IMAP server's certificate
    maildir: Path
    main_cf: dict[str, str] = field(default_factory=dict)

    @property
    def postfix_dir(self) -> Path:
        return self.root / "postfix"

    @property
    def dovecot_conf(self) -> Path:
        return self.root / "dovecot" / "dovecot.conf"

    def client_context(self) -> ssl.SSLContext:
        """A verifying client SSLContext for STARTTLS to either server."""
        return ssl.create_default_context(cafile=self.ca_file)

    def smtp_env(self) -> dict[str, str]:
        """herald-smtp's SMTP_* settings for this relay (STARTTLS, AUTH, bounces to the Dovecot mailbox)."""
        return {"SMTP_HOST": self.smtp_host, "SMTP_PORT": str(self.smtp_port), "SMTP_USER": self.smtp_user,
                "SMTP_PASSWORD": self.smtp_password, "SMTP_USE_STARTTLS": "true", "SMTP_USE_TLS": "false",
                "SMTP_TLS_CA_FILE": self.ca_file, "SMTP_BOUNCE_ADDRESS": self.bounce_address}

    def logs(self) -> str:
        """Postfix's and Dovecot's logs so far, for a failure message."""
        parts = []
        for name in ("maillog", "dovecot.log"):
            path = self.root / name
            parts.append(f"--- {name}\n" + (path.read_text(errors="replace") if path.exists() else "(none)"))
        return "\n".join(parts)

    def wait_for_mails(self, count: int = 1, timeout: float = 30.0) -> list[Path]:
        """The first `count` mails delivered to the bounce Maildir (new/, oldest first), within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            new = self.maildir / "new"
            files = sorted(new.iterdir(), key=lambda path: path.stat().st_mtime) if new.is_dir() else []
            if len(files) >= count:
                return files[:count]
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(files)} of {count} mails in the bounce Maildir after {timeout:.0f} s\n"
                                     + self.logs())
            time.sleep(0.2)


@pytest.fixture
def mta_next_hop() -> Iterator[SmtpTestServer]:
    """The next hop the bed relays example.org to: an aiosmtpd server on 127.0.0.1; inject() its replies."""
    with SmtpTestServer(pipelining=False) as server:
        yield server


@pytest.fixture
def mta(mta_next_hop: SmtpTestServer) -> Iterator[MtaBed]:
    """Postfix + Dovecot running, relaying example.org to mta_next_hop; stopped after the test."""
    with running_mta(mta_next_hop.port) as bed:
        yield bed


@contextmanager
def running_mta(next_hop_port: int, main_cf: dict[str, str] | None = None) -> Iterator[MtaBed]:
    bed = start_mta(next_hop_port, main_cf)
    try:
        yield bed
    finally:
        stop_mta(bed)


def start_mta(next_hop_port: int, main_cf: dict[str, str] | None = None) -> MtaBed:
    """Postfix and Dovecot running, relaying example.org to 127.0.0.1:next_hop_port. Call stop_mta() after."""
    _require_root_and_tools()
    root = Path(tempfile.mkdtemp(prefix="herald-mta-"))
    root.chmod(0o755)
    bed = MtaBed(root=root, smtp_host=LOCALHOST, smtp_port=free_port(), smtp_user=SMTP_USER,
                 smtp_password=SMTP_PASSWORD, imap_host=LOCALHOST, imap_port=free_port(), imap_user=BOUNCE_ADDRESS,
                 imap_password=IMAP_PASSWORD, imap_mailbox="INBOX", bounce_address=BOUNCE_ADDRESS,
                 next_hop_port=next_hop_port, ca_file=str(root / "tls" / "ca.pem"),
                 maildir=root / "mail" / "bounces" / "Maildir", main_cf=dict(main_cf or {}))
    try:
        _write_certificates(root / "tls")
        _write_users(bed)
        _write_dovecot(bed)
        _write_postfix(bed)
        _start_dovecot(bed)
        _start_postfix(bed)
    except BaseException:
        stop_mta(bed)
        raise
    return bed


def stop_mta(bed: MtaBed) -> None:
    """Stop this bed's Postfix and Dovecot (never the system's), wait for their masters to exit, remove the files."""
    pids = {name: _pid(pid_file) for name, pid_file in _pid_files(bed).items()}  # before the masters remove them
    try:
        if (bed.postfix_dir / "main.cf").exists():
            subprocess.run(["postfix", "-c", str(bed.postfix_dir), "stop"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        if bed.dovecot_conf.exists():
            subprocess.run(["doveadm", "-c", str(bed.dovecot_conf), "stop"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        left = [name for name, pid in pids.items() if pid is not None and not _exited(pid, timeout=15)]
        if left:
            raise RuntimeError(f"{', '.join(left)} still running after stop (root {bed.root})")
    finally:
        if not os.environ.get("HERALD_KEEP_MTA"):
            shutil.rmtree(bed.root, ignore_errors=True)


# -- setup


def _require_root_and_tools() -> None:
    if os.geteuid() != 0:
        raise RuntimeError("the Postfix + Dovecot test bed needs root (Postfix and Dovecot drop privileges)")
    missing = [tool for tool in ("postfix", "postconf", "dovecot", "doveadm") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not found: apt-get install postfix dovecot-imapd")


def _write_certificates(tls: Path) -> None:
    import trustme

    tls.mkdir()
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", LOCALHOST, MTA_HOSTNAME)
    ca.cert_pem.write_to_path(str(tls / "ca.pem"))
    cert.private_key_pem.write_to_path(str(tls / "server.key"))
    (tls / "server.pem").write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    (tls / "server.key").chmod(0o600)


def _write_users(bed: MtaBed) -> None:
    # One passwd-file for Dovecot's passdb and userdb: the bounce mailbox (IMAP) and the relay user (SMTP AUTH,
    # which Postfix asks Dovecot's auth service about).
    mail = bed.root / "mail"
    mail.mkdir()
    os.chown(mail, MAIL_UID, MAIL_UID)
    lines = [f"{bed.imap_user}:{{PLAIN}}{bed.imap_password}:{MAIL_UID}:{MAIL_UID}::{mail / 'bounces'}::",
             f"{bed.smtp_user}:{{PLAIN}}{bed.smtp_password}:{MAIL_UID}:{MAIL_UID}::{mail / 'relay'}::"]
    users = bed.root / "dovecot" / "users"
    users.parent.mkdir()
    users.write_text("\n".join(lines) + "\n")
    shutil.chown(users, "root", "dovecot")  # read by Dovecot's auth process (user dovecot)
    users.chmod(0o640)


def _write_dovecot(bed: MtaBed) -> None:
    root = bed.root
    bed.dovecot_conf.write_text(f"""\
protocols = imap
listen = {LOCALHOST}
base_dir = {root}/dovecot/run
state_dir = {root}/dovecot/state
instance_name = herald-mta-{bed.imap_port}
log_path = {root}/dovecot.log
ssl = required
ssl_cert = <{root}/tls/server.pem
ssl_key = <{root}/tls/server.key
ssl_dh = </usr/share/dovecot/dh.pem
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/dovecot/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/dovecot/users
}}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    address = {LOCALHOST}
    port = {bed.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service auth {{
  unix_listener {root}/dovecot/auth-postfix {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
""")


# Only the services this bed uses; chroot off everywhere so the absolute paths above work.
MASTER_CF = """\
{host}:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def _main_cf(bed: MtaBed) -> dict[str, str]:
    root = bed.root
    return {
        "compatibility_level": "3.6",
        "queue_directory": f"{root}/postfix-queue",
        "data_directory": f"{root}/postfix-data",
        "maillog_file": f"{root}/maillog",
        "maillog_file_prefixes": str(root),
        "myhostname": MTA_HOSTNAME,
        "mydomain": "herald.test",
        "myorigin": "$myhostname",
        "mydestination": "",
        "local_transport": "error:5.1.1 no local delivery in the test bed",
        "alias_maps": "",
        "alias_database": "",
        "inet_interfaces": LOCALHOST,
        "inet_protocols": "ipv4",
        "mynetworks": f"{LOCALHOST}/32",
        "smtputf8_enable": "yes",
        # The next hop is a test server on loopback: no DNS, no MX, no TLS.
        "smtp_dns_support_level": "disabled",
        "smtp_host_lookup": "native",
        "smtp_tls_security_level": "none",
        "transport_maps": f"texthash:{root}/postfix/transport",
        "virtual_mailbox_domains": "example.com",
        "virtual_mailbox_base": f"{root}/mail",
        "virtual_mailbox_maps": f"texthash:{root}/postfix/vmailbox",
        "virtual_uid_maps": f"static:{MAIL_UID}",
        "virtual_gid_maps": f"static:{MAIL_UID}",
        # Submission: STARTTLS offered, AUTH only after it, relaying only for the authenticated user.
        "smtpd_tls_security_level": "may",
        "smtpd_tls_cert_file": f"{root}/tls/server.pem",
        "smtpd_tls_key_file": f"{root}/tls/server.key",
        "smtpd_tls_auth_only": "yes",
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_sasl_type": "dovecot",
        "smtpd_sasl_path": f"{root}/dovecot/auth-postfix",
        "smtpd_relay_restrictions": "permit_sasl_authenticated, reject_unauth_destination",
        # A deferred mail is tried again within seconds, not minutes.
        "queue_run_delay": "1s",
        "minimal_backoff_time": "1s",
        "maximal_backoff_time": "2s",
    } | bed.main_cf


def _write_postfix(bed: MtaBed) -> None:
    config = bed.postfix_dir
    config.mkdir()
    (bed.root / "postfix-queue").mkdir()  # root's; `postfix check` makes the queue directories in it
    (bed.root / "postfix-data").mkdir()
    shutil.chown(bed.root / "postfix-data", "postfix", "postfix")
    (config / "main.cf").write_text("".join(f"{key} = {value}\n" for key, value in _main_cf(bed).items()))
    (config / "master.cf").write_text(MASTER_CF.format(host=bed.smtp_host, port=bed.smtp_port))
    (config / "transport").write_text(f"{RELAY_DOMAIN} smtp:[{LOCALHOST}]:{bed.next_hop_port}\n")
    (config / "vmailbox").write_text(f"{bed.bounce_address} bounces/Maildir/\n")


def _start_dovecot(bed: MtaBed) -> None:
    _run(["dovecot", "-c", str(bed.dovecot_conf)], "dovecot", bed)
    _wait_for_port(bed.imap_port, "Dovecot IMAP", bed)


def _start_postfix(bed: MtaBed) -> None:
    config = str(bed.postfix_dir)
    _run(["postfix", "-c", config, "check"], "postfix check", bed)
    _run(["postfix", "-c", config, "start"], "postfix start", bed)
    _wait_for_port(bed.smtp_port, "Postfix submission", bed)


def _run(argv: list[str], what: str, bed: MtaBed) -> None:
    # Output to a file, not a pipe: the daemons they leave behind inherit it and would hold a pipe open.
    output = bed.root / "commands.log"
    with output.open("a+") as log:
        start = log.tell()
        code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                              timeout=60).returncode
        log.seek(start)
        said = log.read()
    if code != 0:
        raise RuntimeError(f"{what} failed ({code}): {said}\n{bed.logs()}")


def _wait_for_port(port: int, what: str, bed: MtaBed) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.create_connection((LOCALHOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {LOCALHOST}:{port} within {START_TIMEOUT:.0f} s\n{bed.logs()}")


# -- stopping


def _pid_files(bed: MtaBed) -> dict[str, Path]:
    return {"postfix": bed.root / "postfix-queue" / "pid" / "master.pid",
            "dovecot": bed.root / "dovecot" / "run" / "master.pid"}


def _pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _exited(pid: int, timeout: float) -> bool:
    """True once process `pid` is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False
