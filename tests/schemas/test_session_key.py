"""session_key: the Kafka key of a session, which no two sessions may share (contract 1.1)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from schemas import session_key


def test_ordinary_ids_give_the_key_they_always_gave() -> None:
    assert (
        session_key("wavecell", "account_x", "37f31065-b050") == "wavecell:account_x:37f31065-b050"
    )
    assert session_key("vpbx", None, "c-1") == session_key("vpbx", "", "c-1") == "vpbx::c-1"


def test_a_colon_moved_between_account_and_session_id_gives_another_key() -> None:
    assert session_key("wavecell", "acc", "coll:x") == "wavecell:acc:coll%3Ax"
    assert session_key("wavecell", "acc:coll", "x") == "wavecell:acc%3Acoll:x"


def test_an_escape_sequence_in_an_id_is_not_read_as_a_colon() -> None:
    assert session_key("wavecell", "acc", "a%3Ab") == "wavecell:acc:a%253Ab"
    assert session_key("wavecell", "acc", "a%3Ab") != session_key("wavecell", "acc", "a:b")
    assert session_key("wavecell", "acc%3A", "x") != session_key("wavecell", "acc:", "x")


_ids = st.text(alphabet=st.sampled_from(":%3Aa2"), max_size=8) | st.text(max_size=8)


def _unescaped(segment: str) -> str:
    return segment.replace("%3A", ":").replace("%25", "%")


@given(account=_ids, session_id=_ids)
def test_a_key_reads_back_as_its_account_and_session_id(account: str, session_id: str) -> None:
    """Injective: the key's three segments, unescaped, are what it was made of."""
    provider, key_account, key_session_id = session_key("p", account, session_id).split(":")
    assert (provider, _unescaped(key_account), _unescaped(key_session_id)) == (
        "p",
        account,
        session_id,
    )


@given(first=st.tuples(_ids, _ids), second=st.tuples(_ids, _ids))
def test_different_account_and_session_id_pairs_never_share_a_key(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    if first != second:
        assert session_key("p", *first) != session_key("p", *second)
