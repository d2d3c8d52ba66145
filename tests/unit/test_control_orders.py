"""The orders of megaphone.server.control: encoded and decoded as one, bad input refused with a
clear error before anything is published, and a control message that is no order ignored."""

from __future__ import annotations

import pytest

from megaphone.core.closecodes import CloseCode
from megaphone.core.topics import InvalidTopic
from megaphone.server.auth import LOGOUT
from megaphone.server.control import (
    RECHECK,
    Order,
    decode_order,
    disconnect_order,
    unsubscribe_order,
)


@pytest.mark.parametrize(
    "order",
    [disconnect_order(), disconnect_order(1012), unsubscribe_order("orders:17", "closed"), RECHECK],
)
def test_an_order_decodes_as_it_was_encoded(order: Order) -> None:
    assert decode_order(order.encode()) == order


def test_the_logout_notice_is_a_disconnect_with_4401() -> None:
    assert decode_order(LOGOUT) == Order("disconnect", code=CloseCode.UNAUTHORIZED)


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "nonsense",
        b"\x00\xff",
        "[]",
        '{"op": "explode"}',
        '{"op": "disconnect", "code": 1006}',
        '{"op": "disconnect", "code": true}',
        '{"op": "unsubscribe", "topic": "$user:1", "reason": "x"}',
        '{"op": "unsubscribe", "topic": "news"}',
    ],
)
def test_a_control_message_that_is_no_order_is_ignored(payload: str | bytes) -> None:
    assert decode_order(payload) is None


def test_bad_arguments_are_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match="disconnect code"):
        disconnect_order(1006)
    with pytest.raises(ValueError, match="rejection code"):
        unsubscribe_order("news", "Not A Code")
    with pytest.raises(InvalidTopic):
        unsubscribe_order("", "closed")
