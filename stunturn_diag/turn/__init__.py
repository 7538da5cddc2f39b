"""TURN (RFC 8656): a sans-IO client (``client``), a UDP runner (``runner``) and the
TURN REST API credentials the signaling server hands out (``rest``)."""

from stunturn_diag.sansio.turn.client import (Allocated, ChannelBound, Challenged, PeerData, PermissionsCreated,
                     Refreshed, TurnClient, TurnFailure, channel_data, is_channel_data,
                     parse_channel_data)
from stunturn_diag.sansio.turn.rest import rest_credentials, rest_password

__all__ = ["TurnClient", "Allocated", "ChannelBound", "Challenged", "PeerData",
           "PermissionsCreated", "Refreshed", "TurnFailure", "channel_data", "is_channel_data",
           "parse_channel_data", "rest_credentials", "rest_password"]
