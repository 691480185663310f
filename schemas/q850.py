"""ITU-T Q.850 cause values shared by every provider, and the SIP status RFC 3398 maps each to.

Labels are the conventional upper-snake names (as FreeSWITCH and the voice_messaging provider use
them), so the same cause reads the same whichever provider reported it.
"""

from __future__ import annotations

from functools import lru_cache

from schemas.events import Cause

Q850_LABELS: dict[int, str] = {
    0: "UNSPECIFIED",
    1: "UNALLOCATED_NUMBER",
    2: "NO_ROUTE_TRANSIT_NET",
    3: "NO_ROUTE_DESTINATION",
    4: "SEND_SPECIAL_INFORMATION_TONE",
    5: "MISDIALLED_TRUNK_PREFIX",
    6: "CHANNEL_UNACCEPTABLE",
    7: "CALL_AWARDED_DELIVERED",
    8: "PREEMPTION",
    9: "PREEMPTION_CIRCUIT_RESERVED",
    16: "NORMAL_CLEARING",
    17: "USER_BUSY",
    18: "NO_USER_RESPONSE",
    19: "NO_ANSWER",
    20: "SUBSCRIBER_ABSENT",
    21: "CALL_REJECTED",
    22: "NUMBER_CHANGED",
    23: "REDIRECTION_TO_NEW_DESTINATION",
    25: "EXCHANGE_ROUTING_ERROR",
    26: "NON_SELECTED_USER_CLEARING",
    27: "DESTINATION_OUT_OF_ORDER",
    28: "INVALID_NUMBER_FORMAT",
    29: "FACILITY_REJECTED",
    30: "RESPONSE_TO_STATUS_ENQUIRY",
    31: "NORMAL_UNSPECIFIED",
    34: "NORMAL_CIRCUIT_CONGESTION",
    38: "NETWORK_OUT_OF_ORDER",
    39: "PERMANENT_FRAME_MODE_CONNECTION_OUT_OF_SERVICE",
    40: "PERMANENT_FRAME_MODE_CONNECTION_OPERATIONAL",
    41: "NORMAL_TEMPORARY_FAILURE",
    42: "SWITCH_CONGESTION",
    43: "ACCESS_INFO_DISCARDED",
    44: "REQUESTED_CHAN_UNAVAIL",
    46: "PRECEDENCE_CALL_BLOCKED",
    47: "RESOURCE_UNAVAILABLE",
    49: "QUALITY_OF_SERVICE_NOT_AVAILABLE",
    50: "FACILITY_NOT_SUBSCRIBED",
    52: "OUTGOING_CALL_BARRED",
    53: "OUTGOING_CALL_BARRED_WITHIN_CUG",
    54: "INCOMING_CALL_BARRED",
    55: "INCOMING_CALL_BARRED_WITHIN_CUG",
    57: "BEARERCAPABILITY_NOTAUTH",
    58: "BEARERCAPABILITY_NOTAVAIL",
    62: "INCONSISTENT_OUTGOING_ACCESS",
    63: "SERVICE_UNAVAILABLE",
    65: "BEARERCAPABILITY_NOTIMPL",
    66: "CHAN_NOT_IMPLEMENTED",
    69: "FACILITY_NOT_IMPLEMENTED",
    70: "ONLY_RESTRICTED_DIGITAL_INFO_AVAILABLE",
    79: "SERVICE_NOT_IMPLEMENTED",
    81: "INVALID_CALL_REFERENCE",
    82: "IDENTIFIED_CHANNEL_DOES_NOT_EXIST",
    83: "SUSPENDED_CALL_EXISTS_BUT_NOT_THIS_ID",
    84: "CALL_ID_IN_USE",
    85: "NO_CALL_SUSPENDED",
    86: "CALL_WITH_ID_CLEARED",
    87: "USER_NOT_MEMBER_OF_CUG",
    88: "INCOMPATIBLE_DESTINATION",
    90: "NON_EXISTENT_CUG",
    91: "INVALID_TRANSIT_NETWORK_SELECTION",
    95: "INVALID_MSG_UNSPECIFIED",
    96: "MANDATORY_IE_MISSING",
    97: "MESSAGE_TYPE_NONEXIST",
    98: "WRONG_MESSAGE",
    99: "IE_NONEXIST",
    100: "INVALID_IE_CONTENTS",
    101: "WRONG_CALL_STATE",
    102: "RECOVERY_ON_TIMER_EXPIRE",
    103: "MANDATORY_IE_LENGTH_ERROR",
    110: "MESSAGE_WITH_UNRECOGNIZED_PARAMETER",
    111: "PROTOCOL_ERROR",
    127: "INTERWORKING",
}

Q850_CODES: dict[str, int] = {label: code for code, label in Q850_LABELS.items()}
"""Label → cause value, for providers that report only the name (vpbx `hangup_cause`)."""

Q850_SIP: dict[int, int] = {
    1: 404, 2: 404, 3: 404,
    17: 486,
    18: 408,
    19: 480, 20: 480, 31: 480,
    21: 403, 55: 403, 57: 403, 87: 403,
    22: 410, 23: 410,
    26: 404,
    27: 502,
    28: 484,
    29: 501, 79: 501,
    34: 503, 38: 503, 41: 503, 42: 503, 47: 503, 58: 503, 88: 503,
    65: 488, 70: 488,
    102: 504,
    111: 500, 127: 500,
}  # fmt: skip
"""Q.850 cause → SIP response, RFC 3398 section 7.2.4.1; causes it does not list have none."""

Q850_MAX = 127


@lru_cache(maxsize=1024)
def q850_cause(code: int, provider_code: str | None = None, label: str | None = None) -> Cause:
    """The cause for Q.850 value `code`; `label` is used only when the table has no name for it.

    Causes are frozen and few, so each distinct one is built once.
    """
    return Cause(
        q850=code,
        label=Q850_LABELS.get(code, label),
        provider_code=provider_code,
        sip=Q850_SIP.get(code),
    )
