"""pie-lsp end to end with a trained model: the shipped default one (skipped until it has been
trained), or the model folder named by PIE_LSP_TEST_MODEL."""

from __future__ import annotations

import os

import pytest
import pytest_asyncio
from pytest_lsp import LanguageClient

from tests.conftest import DEFAULT_MODEL_DIR
from tests.lsp_session import change, inline, open_document, start_server, stats, wait_for_model

MODEL = os.environ.get("PIE_LSP_TEST_MODEL", "default")

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(
        MODEL == "default" and not (DEFAULT_MODEL_DIR / "model.safetensors").exists(),
        reason=f"the default model has not been trained into {DEFAULT_MODEL_DIR}",
    ),
]

SOURCE = (
    "import os\n\n\n"
    + "".join(
        f"def read_{i}(path):\n    with open(path) as handle:\n        return handle.read()\n\n\n"
        for i in range(20)
    )
    + "def add(a, b):\n    return \n\n\n"
    + "".join(f"def name_{i}(path):\n    return os.path.basename(path)\n\n\n" for i in range(20))
)
LINES = SOURCE.split("\n")
RETURN_LINE = LINES.index("def add(a, b):") + 1


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client():
    lsp_client = await start_server(
        ["--model", MODEL],
        # The gate is tested on its own; here every place must get a suggestion.
        initialization_options={"pieLsp": {"debounceMs": 0, "minConfidence": 0, "minTokenProb": 0}},
    )
    ready = await wait_for_model(lsp_client, timeout=300)
    assert ready["modelState"] == "ready", ready
    yield lsp_client
    await lsp_client.shutdown_session()
    await lsp_client.stop()


async def test_completes_and_follows_edits_with_pie(client: LanguageClient) -> None:
    uri = "file:///work/default_model.py"
    open_document(client, uri, SOURCE)
    items = await inline(client, uri, RETURN_LINE, len("    return "))
    assert items and items[0].insert_text.strip()
    # The end of a line: the return statement, which nothing at column 0 continues.
    later_lines = items[0].insert_text.split("\n")[1:]
    assert all(not line or line[0].isspace() or line[0] in ")]}" for line in later_lines)
    change(client, uri, 2, (3, 4), (3, 10), "load_0")  # far above the cursor
    change(client, uri, 3, (RETURN_LINE, 11), (RETURN_LINE, 11), "a")
    items = await inline(client, uri, RETURN_LINE, len("    return a"))
    document = (await stats(client, uri))["documents"][uri]
    assert document["last_edit_strategy"] == "pie"
    assert document["last_edit"]["tokens_encoded"] < 0.1 * document["tokens_cached"]
    assert document["last_completion_seconds"] < 10
