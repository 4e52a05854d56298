"""Masking: sensitive values never reach a masked group's client in clear.

* :mod:`pgjit.masking.rules` — the ``masking:`` rules of a policy file, the
  mask functions and the content detectors;
* :mod:`pgjit.masking.lineage` — which output columns of a statement derive
  from masked columns (pglast), and which uses of them are oracles;
* :mod:`pgjit.masking.wire` — the I/O-free result filter the relay runs
  over the server's messages (RowDescription, DataRow, CopyData,
  ErrorResponse, NoticeResponse, NotificationResponse).

No trio, no sockets, no store (DESIGN.md's layer table).
"""

from pgjit.masking.rules import MaskProfile, MaskRule, MaskRuleError, parse_rules

__all__ = ["MaskProfile", "MaskRule", "MaskRuleError", "parse_rules"]
