"""The bounce mailbox over IMAP (imapclient): log in, make sure the folders exist, list what waits in the inbox,
fetch a mail, move it, and wait for the next one (IDLE when the server offers it, else a plain sleep).

Nothing is ever deleted: a mail leaves the inbox only by MOVE (RFC 6851), or where the server lacks MOVE by
COPY then \\Deleted and UID EXPUNGE of that one mail (RFC 4315), and only after it was recorded.
"""

from __future__ import annotations

import ssl
import threading

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from ..config.bounce_mailbox import BounceMailbox
from .recorder import PROCESSED, UNRECOGNISED

# An IMAP server answers within this, or the pass fails (and the reader tries again later).
IMAP_TIMEOUT_SECONDS = 30.0
# What a failed IMAP operation raises: the protocol's own errors and the socket's.
ERRORS = (IMAPClientError, OSError)


class ImapMailbox:
    """An IMAP session on the bounce mailbox. open_mailbox() runs the steps the doctor runs one by one."""

    def __init__(self, mailbox: BounceMailbox, tls: ssl.SSLContext):
        """Connect, with TLS from the first byte or by STARTTLS (required: the password never travels in clear)."""
        self.mailbox = mailbox
        self.folders: dict[str, str] = {}
        self.client = IMAPClient(mailbox.host, mailbox.port, ssl=mailbox.implicit_tls, ssl_context=tls,
                                 timeout=IMAP_TIMEOUT_SECONDS)
        if not mailbox.implicit_tls:
            try:
                self.client.starttls(tls)
            except BaseException:
                self.close()
                raise

    def login(self) -> None:
        self.client.login(self.mailbox.user, self.mailbox.password)

    def prepare_folders(self) -> list[str]:
        """Find Processed and Unrecognised in the personal namespace (INBOX.Processed on some servers), creating
        the missing ones; the names of those created."""
        personal = self.client.namespace().personal
        prefix = personal[0][0] if personal else ""
        created = []
        for name in (PROCESSED, UNRECOGNISED):
            self.folders[name] = prefix + name
            if not self.client.folder_exists(prefix + name):
                self.client.create_folder(prefix + name)
                created.append(prefix + name)
        return created

    def select(self) -> int:
        """Select the inbox; how many mails it holds."""
        return int(self.client.select_folder(self.mailbox.folder).get(b"EXISTS", 0))

    def waiting(self) -> list[int]:
        """The UIDs in the inbox, oldest first."""
        return sorted(self.client.search(["UNDELETED"]))

    def fetch(self, uid: int) -> bytes | None:
        """The whole mail, without marking it seen; None if it went meanwhile."""
        found = self.client.fetch([uid], ["BODY.PEEK[]"]).get(uid)
        return None if found is None else found.get(b"BODY[]")

    def move(self, uid: int, folder: str) -> None:
        target = self.folders[folder]
        if self.client.has_capability("MOVE"):
            self.client.move([uid], target)
            return
        self.client.copy([uid], target)
        self.client.delete_messages([uid])
        if self.client.has_capability("UIDPLUS"):
            self.client.uid_expunge([uid])  # only this mail, never one someone else marked

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        """Until `seconds` passed or `stop` was set, or with IDLE until the server tells of a change in the
        inbox (True: a mail may have arrived)."""
        if not self.client.has_capability("IDLE"):
            stop.wait(seconds)
            return False
        self.client.idle()
        try:
            return bool(self.client.idle_check(timeout=seconds))
        finally:
            self.client.idle_done()

    def close(self) -> None:
        try:
            self.client.logout()
        except ERRORS:
            self.client.shutdown()


def open_mailbox(mailbox: BounceMailbox, tls: ssl.SSLContext) -> ImapMailbox:
    """Connect, log in, make sure of the folders, select the inbox."""
    box = ImapMailbox(mailbox, tls)
    try:
        box.login()
        box.prepare_folders()
        box.select()
    except BaseException:
        box.close()
        raise
    return box


def tls_context(ca_file: str, verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
