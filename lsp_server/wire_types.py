"""How JSON from clients becomes lsprotocol types, forgiving what real clients send.

vscode-languageclient 9 passes `InlineCompletionContext.selectedCompletionInfo.range` through
unconverted: a JSON array `[start, end]` instead of a Range object. lsprotocol's converter
rejects it, so the whole request fails with "Invalid Params" and the user sees an error toast
while the word-suggestion menu is open.
"""

from __future__ import annotations

from typing import Any

import cattrs
from lsprotocol import types
from pygls.protocol import default_converter


def pie_converter() -> cattrs.Converter:
    converter = default_converter()

    def structure_selected_info(value: Any, _: type) -> types.SelectedCompletionInfo:
        if isinstance(value, dict) and isinstance(value.get("range"), list | tuple):
            start, end = value["range"]
            value = {**value, "range": {"start": start, "end": end}}
        return types.SelectedCompletionInfo(
            range=converter.structure(value["range"], types.Range), text=value["text"]
        )

    converter.register_structure_hook(types.SelectedCompletionInfo, structure_selected_info)
    return converter
