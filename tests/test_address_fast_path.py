"""The plain-address fast path (addresses._plain_mailbox) against email-validator (addresses._validated_mailbox).

For any text, the fast path either steps aside (None) or gives exactly the
Mailbox email-validator's path gives; when email-validator refuses, the fast
path must have stepped aside, so the refusal and its message stay
email-validator's. Generated: plain addresses and near-misses (dots, hyphens,
long labels and local parts around 63/64/65 and the 253/254 totals, digit and
special-use top-level domains, upper case, Punycode-like labels, other
characters), and arbitrary text.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings as hsettings, strategies as st

from herald_smtp.addresses import InvalidAddress, Mailbox, _plain_mailbox, _validated_mailbox, parse_address

PROPERTY = hsettings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

atext = "abcXYZ0189!#$%&'*+/=?^_`{|}~-"
near_local = st.one_of(
    st.text(alphabet=atext + ".", min_size=0, max_size=12),
    st.integers(60, 68).map(lambda n: "a" * n),  # around the 64-octet limit
    st.lists(st.text(alphabet=atext, min_size=1, max_size=5), min_size=1, max_size=4).map(".".join),
    st.text(alphabet=atext + '."@ \\<>()[],;:\t\né', max_size=8),
)
label = st.one_of(
    st.text(alphabet="abZ09-", min_size=1, max_size=8),
    st.integers(61, 65).map(lambda n: "b" * n),  # around the 63-character label limit
    st.sampled_from(["xn--p1ai", "ab--cd", "xn--", "-a", "a-", "a_b", "ex—ample", "例子", "A-B"]),
)
tld = st.one_of(
    st.text(alphabet="abcXYZ", min_size=1, max_size=5),
    st.text(alphabet="abc019-", min_size=1, max_size=4),
    st.sampled_from(["com", "test", "TEST", "local", "LOCAL", "invalid", "localhost", "onion", "arpa", "123",
                     "xn--p1ai", "c0m", ""]),
)
near_domain = st.builds(lambda labels, last: ".".join([*labels, last]), st.lists(label, max_size=4), tld)
joiner = st.sampled_from(["@", "@", "@", "@@", "", "@."])
near_address = st.builds(lambda local, at, domain: f"{local}{at}{domain}", near_local, joiner, near_domain)
# Long domains: totals around 253 after the @ and 254 in all.
long_address = st.builds(lambda local, n, last: f"{local}@{'.'.join(['c' * 63] * n)}.{last}",
                         st.text(alphabet="ab", min_size=1, max_size=64), st.integers(1, 4),
                         st.text(alphabet="de", min_size=1, max_size=63))


def slow(text: str, international: bool) -> Mailbox | str:
    try:
        return _validated_mailbox(text, international)
    except InvalidAddress as exc:
        return f"refused: {exc}"


def same_answer(text: str) -> None:
    fast = _plain_mailbox(text)
    for international in (False, True):
        expected = slow(text, international)
        if fast is not None:
            assert fast == expected, text
            assert parse_address(text, international=international) == expected
        elif isinstance(expected, str) and text.isascii() and "=?" not in text:
            with pytest.raises(InvalidAddress) as refused:
                parse_address(text, international=international)
            assert f"refused: {refused.value}" == expected  # email-validator's own message


@PROPERTY
@given(near_address | long_address)
@example("someone@example.com")
@example("Someone.Else+tag@Mail.Example.COM")
@example("a@b.c")
@example("a" * 64 + "@example.com")
@example("a" * 65 + "@example.com")
@example("a@" + "b" * 63 + ".com")
@example("a@" + "b" * 64 + ".com")
@example("a@" + ".".join(["c" * 63] * 3) + "." + "d" * 61)  # 253 after the @, 255 in all
@example("a@" + ".".join(["c" * 63] * 3) + "." + "d" * 62)  # 254 after the @
@example("ab@" + ".".join(["c" * 63] * 3) + "." + "d" * 60)  # 252 after the @, 255 in all
@example("a@" + ".".join(["c" * 63] * 3) + "." + "d" * 60)  # 254 in all
@example("a@x.test")
@example("a@x.TEST")
@example("a@x.Local")
@example("a@x.c0m")
@example("a@x.123")
@example("a@x-.com")
@example("a@-x.com")
@example("a@x..com")
@example(".a@x.com")
@example("a.@x.com")
@example("a@xn--p1ai.com")
@example("a@ab--cd.com")
@example("postmaster@example.com")
@example("a@b@c.com")
@example("a@example")
def test_the_fast_path_gives_email_validators_answer_or_steps_aside(text):
    same_answer(text)


@PROPERTY
@given(st.text(max_size=40))
def test_on_any_text_too(text):
    same_answer(text)


def test_the_plain_addresses_take_the_fast_path():
    for text in ("someone@example.com", "j.doe+code@mail.example.co.uk", "A_B@Example.Test", "x@a-b.io"):
        local, _, domain = text.rpartition("@")
        assert _plain_mailbox(text) == Mailbox(local, domain, domain)
