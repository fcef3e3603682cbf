"""pie-lsp's LSP handlers: convert protocol types, call the completion engine, convert back.

The server answers `initialize` at once and loads the model in the background afterwards
(reporting `$/progress`); until the model is ready, or if it cannot be loaded, completions are
empty. Text changes update the engine's own mirror of each document immediately; model work runs
on the engine's worker thread (see `inference.py`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

from cache_engine.completion.documents import DocumentStore
from cache_engine.completion.settings import CompletionSettings, SettingsError
from cache_engine.text.text_change import DocumentError, TextChange, line_suffix
from lsp_server.client_log import ClientLogHandler
from lsp_server.inference import InferenceWorker
from lsp_server.positions import LineIndex, PositionError, encoded_length
from lsp_server.settings import ServerSettings
from lsp_server.wire_types import pie_converter

if TYPE_CHECKING:
    from cache_engine.completion.engine import Completion, CompletionEngine

log = logging.getLogger(__name__)

VERSION = "0.1.0"
STATS_COMMAND = "pie-lsp.stats"
# An inline item's command: the editor runs it when the user accepts the item.
ACCEPTED_COMMAND = "pie-lsp.accepted"
# Sent whenever the model's state changes, for clients that show it (the VS Code status bar).
MODEL_STATE_NOTIFICATION = "pie-lsp/modelState"

COMPLETION_TRIGGER_CHARACTERS = [".", "(", "[", ",", "="]
LABEL_CHARS = 60


@dataclass(frozen=True)
class LaunchOptions:
    model: str = "default"
    device: str = "cpu"
    dtype: str | None = None
    quantize: Literal["int8", "int8-dynamic"] | None = None
    strategy: str = "pie"
    allow_pickle: bool = False
    cuda_graphs: bool = False
    # Records at this level and above also go to the client as window/logMessage.
    client_log_level: int = logging.INFO


@dataclass
class _Generation:
    """A generation in flight and the requests waiting for it.

    Requests share it: cancelling one of them only stops the generation when no other request
    still waits for it.
    """

    flag: threading.Event
    version: int
    offset: int
    task: asyncio.Future[Completion | None] = field(init=False)
    decoding: bool = False  # past the debounce: the model is working on it
    waiters: int = 0
    settings_epoch: int = 0  # the server's settings when it started

    async def join(self) -> Completion | None:
        self.waiters += 1
        try:
            return await asyncio.shield(self.task)
        except asyncio.CancelledError:
            if self.waiters == 1 and not self.task.done():
                self.flag.set()
                self.task.cancel()
            raise
        finally:
            self.waiters -= 1


class PieProtocol(LanguageServerProtocol):
    """pygls' protocol without pygls' own copy of each document.

    pie-lsp keeps its own mirror (it needs the text as it was before each change, and LSP line
    breaks rather than str.splitlines'), so pygls' copy would only double the memory and the
    per-keystroke work on big files, and its errors (a change to a closed document, an odd
    range) would stop notifications before pie-lsp's handlers can report them.
    """

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(
        self, params: types.DidOpenTextDocumentParams
    ) -> Generator[Any, Any, None]:
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_OPEN)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(
        self, params: types.DidChangeTextDocumentParams
    ) -> Generator[Any, Any, None]:
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(
        self, params: types.DidCloseTextDocumentParams
    ) -> Generator[Any, Any, None]:
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CLOSE)) is not None:
            yield handler, (params,), None


class PieLanguageServer(LanguageServer):
    def __init__(self, options: LaunchOptions | None = None):
        super().__init__(
            "pie-lsp",
            VERSION,
            protocol_cls=PieProtocol,
            converter_factory=pie_converter,
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
        )
        self.options = options or LaunchOptions()
        self.documents = DocumentStore()
        self.settings = ServerSettings(
            completion=CompletionSettings(strategy=self.options.strategy)  # type: ignore[arg-type]
        )
        self.engine: CompletionEngine | None = None
        self.model_state = "not loaded"
        self.worker = InferenceWorker()
        # The LSP spec's exit code: 0 after `shutdown`, 1 for `exit` without it. pygls computes
        # it too but raises SystemExit inside asyncio.run, which its own start_io swallows.
        self.shutdown_requested = False
        self.exit_code = 0
        self._line_indexes: dict[str, LineIndex] = {}
        self._background: set[asyncio.Task[None]] = set()
        # Idle refresh: the position of the last request per document, the timer waiting for a
        # pause, and the stop flag of a refresh under way.
        self._last_position: dict[str, types.Position] = {}
        self._idle_timers: dict[str, asyncio.TimerHandle] = {}
        self._idle_flags: dict[str, threading.Event] = {}
        self._generations: dict[str, _Generation] = {}
        # The last generation that ran to its end, per document: (version, offset, the
        # settings epoch it started under, its text). A settings change bumps the epoch, so
        # nothing answered under older settings is reused.
        self._answered: dict[str, tuple[int, int, int, str | None]] = {}
        self._settings_epoch = 0
        self._request_counters: dict[str, dict[str, int]] = {}
        # The documents the client has asked inline completions (ghost text) for.
        self._ghost_text_documents: set[str] = set()

    # ---- documents -----------------------------------------------------------------------

    @property
    def position_encoding(self) -> str:
        """The position encoding agreed at initialize (UTF-16 unless the client offered
        another that pygls preferred)."""
        capabilities = getattr(self.protocol, "server_capabilities", None)
        kind = capabilities.position_encoding if capabilities is not None else None
        return str(getattr(kind, "value", kind) or "utf-16")

    def line_index(self, uri: str, text: str) -> LineIndex:
        index = self._line_indexes.get(uri)
        if index is None or index.text is not text:
            index = self._line_indexes[uri] = LineIndex(text, self.position_encoding)
        return index

    def open_document(self, document: types.TextDocumentItem) -> None:
        self._answered.pop(document.uri, None)
        if self.engine is not None:
            self.engine.open_document(
                document.uri, document.text, document.version, document.language_id
            )
        else:
            self.documents.open(document.uri, document.text, document.version, document.language_id)

    def change_document(self, params: types.DidChangeTextDocumentParams) -> None:
        uri, version = params.text_document.uri, params.text_document.version
        # A version can come back (a client that goes back to an old number): never reuse.
        self._answered.pop(uri, None)
        snapshot = self.documents.snapshot(uri)
        if version <= snapshot.version:
            log.error(
                "didChange for %s goes from version %d back to %d; applying it anyway",
                uri,
                snapshot.version,
                version,
            )
        text = snapshot.text
        changes: list[TextChange] = []
        for event in params.content_changes:
            if isinstance(event, types.TextDocumentContentChangePartial):
                index = (
                    self.line_index(uri, text)
                    if not changes
                    else LineIndex(text, self.position_encoding)
                )
                start = index.resolve(event.range.start)
                end = index.resolve(event.range.end)
                if end.offset < start.offset:
                    raise PositionError(
                        f"change range {_range_text(event.range)} ends before it starts"
                    )
                if start.inside_character or end.inside_character:
                    log.warning(
                        "change range %s splits a character in %s", _range_text(event.range), uri
                    )
                change = TextChange(start.offset, end.offset, event.text)
            else:
                change = TextChange(0, len(text), event.text)
            changes.append(change)
            text = change.apply(text)
        self.documents.change(uri, version, changes)
        # The index of the old text would only keep that text alive.
        self._line_indexes.pop(uri, None)
        self._schedule_idle_refresh(uri)

    def close_document(self, uri: str) -> None:
        self._line_indexes.pop(uri, None)
        self._cancel_idle_refresh(uri)
        self._last_position.pop(uri, None)
        self._answered.pop(uri, None)
        self._ghost_text_documents.discard(uri)
        if self.engine is not None:
            self.engine.close_document(uri)
            self.worker.submit(self.engine.release_closed)
        else:
            self.documents.close(uri)

    # ---- settings ------------------------------------------------------------------------

    def apply_settings(self, raw: object, origin: str) -> None:
        """Apply client settings; invalid ones are reported and the old ones kept."""
        try:
            settings = self.settings.updated(raw)
            if self.engine is not None:
                self.engine.update_settings(settings.completion)
        except SettingsError as error:
            message = f"pie-lsp: invalid settings from {origin}, keeping the previous ones: {error}"
            log.error("%s", message)
            self.window_show_message(
                types.ShowMessageParams(type=types.MessageType.Error, message=message)
            )
            return
        self.settings = settings
        self._settings_epoch += 1
        log.info(
            "settings from %s: %s, debounce %d ms",
            origin,
            settings.completion,
            settings.debounce_ms,
        )

    async def pull_configuration(self) -> object:
        """The "pieLsp" section via workspace/configuration, for clients that send no settings
        with didChangeConfiguration; None when the client cannot answer."""
        workspace = self.client_capabilities.workspace
        if workspace is None or not workspace.configuration:
            return None
        request = types.ConfigurationParams(items=[types.ConfigurationItem(section="pieLsp")])
        try:
            result = await asyncio.wait_for(self.workspace_configuration_async(request), 5)
        except Exception as error:
            log.warning("workspace/configuration failed: %r", error)
            return None
        return result[0] if result else None

    # ---- model ---------------------------------------------------------------------------

    def start_loading_model(self) -> None:
        task = asyncio.get_running_loop().create_task(self._load_model())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _load_model(self) -> None:
        token = f"pie-lsp-load-{uuid.uuid4()}"
        progress = await self._begin_progress(token, f"loading model {self.options.model}")
        self._set_model_state("loading")
        try:
            engine = await self.worker.run(self._build_engine)
        except Exception as error:
            self._set_model_state(f"failed: {error}")
            message = (
                f"pie-lsp: cannot load model {self.options.model!r}: {error}. "
                "Completions stay empty until the server is restarted with a working --model."
            )
            log.error("%s", message, exc_info=not _is_load_error(error))
            self.window_show_message(
                types.ShowMessageParams(type=types.MessageType.Error, message=message)
            )
        else:
            self.engine = engine
            self._set_model_state("ready")
            log.info(
                "model %s ready (FIM: %s, strategy %s)",
                engine.loaded.name,
                "yes" if engine.loaded.fim else "no",
                self.settings.completion.strategy,
            )
        finally:
            if progress:
                self._end_progress(token, f"model {self.model_state}")

    def _set_model_state(self, state: str) -> None:
        self.model_state = state
        if self.protocol._shutdown or self.protocol.writer is None:
            return
        try:
            self.protocol.notify(
                MODEL_STATE_NOTIFICATION, {"state": state, "model": self.options.model}
            )
        except (OSError, ValueError) as error:
            log.debug("model state not sent, the client is gone: %r", error)

    def _build_engine(self) -> CompletionEngine:
        # Imported here: torch and transformers take seconds, and `initialize` must not wait.
        from transformers.utils import logging as transformers_logging

        from cache_engine.completion.engine import CompletionEngine
        from cache_engine.model.loading import load_model

        # Its "Loading weights" bar would land on stderr, which editors show as errors.
        transformers_logging.disable_progress_bar()

        options = self.options
        started = time.perf_counter()
        loaded = load_model(
            options.model,
            device=options.device,
            dtype=options.dtype,
            allow_pickle=options.allow_pickle,
            quantize=options.quantize,
        )
        log.info("model %s loaded in %.1f s", options.model, time.perf_counter() - started)
        graphs = options.cuda_graphs
        try:
            return CompletionEngine(
                loaded, self.settings.completion, self.documents, cuda_graphs=graphs
            )
        except SettingsError as error:
            log.error("settings do not fit model %s (%s): using the defaults", options.model, error)
            defaults = CompletionSettings(strategy=self.settings.completion.strategy)
            self.settings = replace(self.settings, completion=defaults)
            return CompletionEngine(loaded, defaults, self.documents, cuda_graphs=graphs)

    def _end_progress(self, token: str, message: str) -> None:
        # The client may have gone while the model loaded: its pipe is closed, and there is no
        # one left to tell.
        if self.protocol._shutdown or self.protocol.writer is None:
            return
        try:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))
        except (OSError, ValueError) as error:
            log.debug("progress end not sent, the client is gone: %r", error)

    async def _begin_progress(self, token: str, message: str) -> bool:
        window = self.client_capabilities.window
        if window is None or not window.work_done_progress:
            return False
        try:
            await asyncio.wait_for(self.work_done_progress.create_async(token), timeout=5)
        except Exception as error:
            log.warning("client refused a progress token: %r", error)
            return False
        self.work_done_progress.begin(
            token, types.WorkDoneProgressBegin(title="pie-lsp", message=message)
        )
        return True

    # ---- completion ----------------------------------------------------------------------

    async def complete(self, uri: str, position: types.Position) -> str | None:
        """The completion text at `position`, or None (no model, superseded, cancelled, bad
        input).

        One generation serves every request that it can: a request at the same place and
        version shares it (a client may send `completion` and `inlineCompletion` together), and a
        request made while the user types along the place of a running generation waits for
        it and is answered from its text, instead of throwing it away."""
        engine = self.engine
        if engine is None:
            log.debug("completion for %s before the model is ready (%s)", uri, self.model_state)
            return None
        if uri not in self.documents:
            log.error("completion requested for %s, which is not open", uri)
            return None
        self._cancel_idle_refresh(uri)
        self._last_position[uri] = position
        try:
            snapshot = self.documents.snapshot(uri)
            offset = self.line_index(uri, snapshot.text).resolve(position).offset
            typed = engine.typed_ahead(uri, offset, version=snapshot.version)
            if typed is not None:
                log.debug("completion %s in %s: typed ahead", _position_text(position), uri)
                return typed.text
            answered = self._answered.get(uri)
            # A request at the place and version a generation has just answered (a client's
            # second request there, when the first finished before it came) gets that answer,
            # empty or not: decoding again would give the same.
            here = (snapshot.version, offset, self._settings_epoch)
            if answered is not None and answered[:3] == here:
                self._count(uri, "reused_answers")
                log.debug(
                    "completion %s in %s: answered by the generation that just ran there",
                    _position_text(position),
                    uri,
                )
                self._schedule_idle_refresh(uri)  # this request cancelled the one armed
                return answered[3]
            running = self._generations.get(uri)
            if running is not None and not running.task.done():
                if (running.version, running.offset) == (snapshot.version, offset):
                    self._count(uri, "shared_generations")
                    log.debug(
                        "completion %s in %s: shares the running generation",
                        _position_text(position),
                        uri,
                    )
                    completion = await running.join()
                    return _text_of(completion)
                along = self.documents.typed_since(uri, running.version, running.offset)
                # Still in its debounce, it is cheaper to start over at the new place.
                if running.decoding and along and offset == running.offset + len(along):
                    self._count(uri, "typed_along_generations")
                    await running.join()
                    snapshot = self.documents.snapshot(uri)
                    typed = engine.typed_ahead(uri, offset, version=snapshot.version)
                    if typed is not None:
                        return typed.text
        except (PositionError, DocumentError) as error:
            _log_request_error(error, position, uri)
            return None
        generation = _Generation(
            self.worker.begin(uri), snapshot.version, offset, settings_epoch=self._settings_epoch
        )
        generation.task = asyncio.ensure_future(self._generate(engine, uri, position, generation))
        self._generations[uri] = generation
        completion = await generation.join()
        return _text_of(completion)

    async def _generate(
        self, engine: CompletionEngine, uri: str, position: types.Position, run: _Generation
    ) -> Completion | None:
        flag = run.flag
        try:
            if self.settings.debounce_ms:
                await asyncio.sleep(self.settings.debounce_ms / 1000)
            if flag.is_set():
                return None
            snapshot = self.documents.snapshot(uri)
            resolved = self.line_index(uri, snapshot.text).resolve(position)
            if resolved.inside_character:
                log.warning("position %s splits a character in %s", _position_text(position), uri)
            run.version, run.offset, run.decoding = snapshot.version, resolved.offset, True
            completion = await self.worker.generate(
                uri,
                flag,
                engine.complete,
                uri,
                resolved.offset,
                version=snapshot.version,
                should_stop=flag.is_set,
            )
        except asyncio.CancelledError:
            flag.set()
            raise
        except (PositionError, DocumentError) as error:
            _log_request_error(error, position, uri)
            return None
        except Exception:
            log.exception("completion at %s in %s failed", _position_text(position), uri)
            return None
        finally:
            self.worker.end(uri, flag)
            if self._generations.get(uri) is run:
                del self._generations[uri]
            self._schedule_idle_refresh(uri)
        if not flag.is_set() and completion.reason != "cancelled":
            self._answered[uri] = (
                run.version,
                run.offset,
                run.settings_epoch,
                _text_of(completion),
            )
        log.debug(
            "completion %s in %s: %r (%s, %s, %d tokens, %.0f ms)",
            _position_text(position),
            uri,
            completion.text,
            completion.source,
            completion.reason,
            completion.tokens_generated,
            completion.seconds * 1000,
        )
        return completion

    def _count(self, uri: str, counter: str) -> None:
        counters = self._request_counters.setdefault(uri, {})
        counters[counter] = counters.get(counter, 0) + 1

    # ---- idle refresh --------------------------------------------------------------------

    def _cancel_idle_refresh(self, uri: str) -> None:
        timer = self._idle_timers.pop(uri, None)
        if timer is not None:
            timer.cancel()
        flag = self._idle_flags.get(uri)
        if flag is not None:
            flag.set()

    def _schedule_idle_refresh(self, uri: str) -> None:
        """Arm (or re-arm) the pause timer of `uri`: any change or request starts it over."""
        self._cancel_idle_refresh(uri)
        delay = self.settings.idle_refresh_ms
        if not delay or self.engine is None or uri not in self._last_position:
            return
        loop = asyncio.get_running_loop()
        self._idle_timers[uri] = loop.call_later(delay / 1000, self._start_idle_refresh, uri)

    def _start_idle_refresh(self, uri: str) -> None:
        self._idle_timers.pop(uri, None)
        task = asyncio.get_running_loop().create_task(self._idle_refresh(uri))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _idle_refresh(self, uri: str) -> None:
        """Sync the cache at the last requested position and refresh its stale tokens, in
        chunks that stop as soon as the user types or asks again."""
        engine, position = self.engine, self._last_position.get(uri)
        if engine is None or position is None or self.worker.busy(uri) or uri not in self.documents:
            return
        flag = threading.Event()
        self._idle_flags[uri] = flag
        try:
            snapshot = self.documents.snapshot(uri)
            offset = self.line_index(uri, snapshot.text).resolve(position).offset
            exact = await self.worker.run(engine.prepare, uri, offset, should_stop=flag.is_set)
            log.debug("idle refresh of %s at %s: exact=%s", uri, _position_text(position), exact)
        except (DocumentError, PositionError) as error:
            log.debug("no idle refresh of %s: %s", uri, error)
        except Exception:
            log.exception("idle refresh of %s failed", uri)
        finally:
            if self._idle_flags.get(uri) is flag:
                del self._idle_flags[uri]

    async def inline_items(
        self, uri: str, position: types.Position
    ) -> list[types.InlineCompletionItem]:
        """The ghost text item at `position`, in the document as the request found it."""
        self._ghost_text_documents.add(uri)
        # The item replaces the rest of the line with itself plus that rest, so an editor that
        # overlays the item's range (Neovim) or inserts before the rest (VS Code) shows exactly
        # what accepting it inserts; an empty range mid-line is drawn over the rest by Neovim.
        # The rest is read before the model runs: what the user types meanwhile belongs to a
        # later version, and glued onto this item it would turn up inside the suggestion.
        rest = self.rest_of_line(uri, position)
        text = await self.complete(uri, position)
        if not text:
            return []
        end = types.Position(
            line=position.line,
            character=position.character + encoded_length(rest, self.position_encoding),
        )
        self._count(uri, "suggestions_offered")
        return [
            types.InlineCompletionItem(
                insert_text=text + rest,
                range=types.Range(start=position, end=end),
                command=types.Command(
                    title="pie-lsp: suggestion accepted",
                    command=ACCEPTED_COMMAND,
                    arguments=[uri, len(text)],
                ),
            )
        ]

    def rest_of_line(self, uri: str, position: types.Position) -> str:
        """The text after `position` on its line, without the line break."""
        try:
            snapshot = self.documents.snapshot(uri)
            offset = self.line_index(uri, snapshot.text).offset(position)
        except (DocumentError, PositionError):
            return ""
        return line_suffix(snapshot.text, offset)

    def word_before(self, uri: str, position: types.Position) -> str:
        """The identifier characters just before `position` (what a completion menu filters by)."""
        try:
            snapshot = self.documents.snapshot(uri)
            offset = self.line_index(uri, snapshot.text).offset(position)
        except (DocumentError, PositionError):
            return ""
        start = offset
        while start > 0 and (snapshot.text[start - 1].isalnum() or snapshot.text[start - 1] == "_"):
            start -= 1
        return snapshot.text[start:offset]

    def stats(self, uri: str | None) -> dict[str, object]:
        return {
            "model": self.options.model,
            "modelState": self.model_state,
            "strategy": self.settings.completion.strategy,
            "settings": self.settings.client_names(),
            "confidenceGate": self._gate_in_force(),
            "documents": self._document_stats(uri),
        }

    def _gate_in_force(self) -> dict[str, float] | None:
        """minConfidence and minTokenProb as completions use them: -1 in the settings means the
        model's calibrated values, which only the loaded model knows."""
        if self.engine is None:
            return None
        gate = self.engine.confidence_gate(self.settings.completion)
        return {"minConfidence": gate.min_confidence, "minTokenProb": gate.min_token_prob}

    def _document_stats(self, uri: str | None) -> dict[str, dict[str, object]]:
        if self.engine is None:
            return {}
        result = self.engine.stats(uri)
        for key, values in result.items():
            try:
                snapshot = self.documents.snapshot(key)
            except DocumentError:
                continue
            values["version"] = snapshot.version
            values["max_pending_generations"] = self.worker.max_pending.get(key, 0)
            for counter in (
                "shared_generations",
                "typed_along_generations",
                "reused_answers",
                "suggestions_offered",
                "suggestions_accepted",
                "suggestions_partially_accepted",
            ):
                values[counter] = 0
            values.update(self._request_counters.get(key, {}))
            values["chars"] = len(snapshot.text)
            # Lets a client check that the mirror holds exactly its text, without sending it.
            values["text_sha256"] = hashlib.sha256(snapshot.text.encode("utf-8")).hexdigest()
        return result


def create_server(options: LaunchOptions | None = None) -> PieLanguageServer:
    server = PieLanguageServer(options)

    @server.feature(types.INITIALIZE)
    def initialize(ls: PieLanguageServer, params: types.InitializeParams) -> None:
        ls.apply_settings(params.initialization_options, "initializationOptions")

    @server.feature(types.INITIALIZED)
    def initialized(ls: PieLanguageServer, params: types.InitializedParams) -> None:
        handler = ClientLogHandler(ls, asyncio.get_running_loop(), ls.options.client_log_level)
        for name in ("lsp_server", "cache_engine"):
            logging.getLogger(name).addHandler(handler)
        ls.start_loading_model()

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: PieLanguageServer, params: None) -> None:
        ls.shutdown_requested = True
        ls.worker.shutdown()

    @server.feature(types.EXIT)
    def exit_(ls: PieLanguageServer, params: None) -> None:
        ls.exit_code = 0 if ls.shutdown_requested else 1
        ls.worker.shutdown()

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: PieLanguageServer, params: types.DidOpenTextDocumentParams) -> None:
        ls.open_document(params.text_document)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: PieLanguageServer, params: types.DidChangeTextDocumentParams) -> None:
        try:
            ls.change_document(params)
        except (DocumentError, PositionError) as error:
            log.error("didChange for %s ignored: %s", params.text_document.uri, error)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: PieLanguageServer, params: types.DidCloseTextDocumentParams) -> None:
        try:
            ls.close_document(params.text_document.uri)
        except DocumentError as error:
            log.error("didClose ignored: %s", error)

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE)
    def did_save(ls: PieLanguageServer, params: types.DidSaveTextDocumentParams) -> None:
        # The mirror already has every change; saving changes nothing for completions.
        log.debug("saved %s", params.text_document.uri)

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def did_change_configuration(
        ls: PieLanguageServer, params: types.DidChangeConfigurationParams
    ) -> None:
        raw = params.settings
        if raw is None or raw == {}:
            raw = await ls.pull_configuration()
        if raw is not None:
            ls.apply_settings(raw, "workspace/didChangeConfiguration")

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(
        ls: PieLanguageServer, params: types.InlineCompletionParams
    ) -> list[types.InlineCompletionItem]:
        return await ls.inline_items(params.text_document.uri, params.position)

    @server.feature(
        types.TEXT_DOCUMENT_COMPLETION,
        types.CompletionOptions(trigger_characters=COMPLETION_TRIGGER_CHARACTERS),
    )
    async def completion(
        ls: PieLanguageServer, params: types.CompletionParams
    ) -> types.CompletionList:
        # Where the client shows ghost text, a menu item would show the suggestion twice, and
        # the menu would take an Enter meant to break the line. Its asking for ghost text in the
        # document tells; capabilities do not (Neovim 0.12 declares inline completion whether or
        # not it is turned on; lsp-mode declares it as null).
        if params.text_document.uri in ls._ghost_text_documents:
            return types.CompletionList(is_incomplete=False, items=[])
        uri, position = params.text_document.uri, params.position
        # Menus filter items by the word before the cursor, so the item replaces that word, as
        # the request found it (see inline_items).
        word = ls.word_before(uri, position)
        text = await ls.complete(uri, position)
        if not text:
            return types.CompletionList(is_incomplete=True, items=[])
        start = types.Position(
            line=position.line,
            character=position.character - encoded_length(word, ls.position_encoding),
        )
        first_line = (word + text).strip().split("\n")[0].rstrip("\r")
        label = first_line if len(first_line) <= LABEL_CHARS else first_line[:LABEL_CHARS] + "…"
        item = types.CompletionItem(
            label=label,
            kind=types.CompletionItemKind.Text,
            detail="pie-lsp",
            documentation=types.MarkupContent(
                kind=types.MarkupKind.Markdown, value=f"```\n{word + text}\n```"
            ),
            filter_text=word + text,
            sort_text="0",
            insert_text_format=types.InsertTextFormat.PlainText,
            text_edit=types.TextEdit(
                range=types.Range(start=start, end=position), new_text=word + text
            ),
        )
        return types.CompletionList(is_incomplete=True, items=[item])

    @server.command(ACCEPTED_COMMAND)
    def accepted(ls: PieLanguageServer, *arguments: Any) -> None:
        """Counts an accepted suggestion (local telemetry: it never leaves the machine)."""
        if arguments and isinstance(arguments[0], str):
            ls._count(arguments[0], "suggestions_accepted")

    @server.feature("pie-lsp/didPartiallyAccept")
    def partially_accepted(ls: PieLanguageServer, params: Any) -> None:
        """A client that can tell (accept by word or line) reports a partial accept."""
        uri = getattr(params, "uri", None)
        if isinstance(uri, str):
            ls._count(uri, "suggestions_partially_accepted")

    @server.command(STATS_COMMAND)
    def stats(ls: PieLanguageServer, *arguments: Any) -> dict[str, object]:
        """Per-document statistics; the optional argument is one document's URI."""
        uri = arguments[0] if arguments and isinstance(arguments[0], str) else None
        return ls.stats(uri)

    return server


def _log_request_error(error: Exception, position: types.Position, uri: str) -> None:
    if isinstance(error, PositionError):
        # Editors ask for buffers that are not focused, or right after a change shortened the
        # text: nothing to offer there, and nothing wrong.
        log.debug("no completion at %s in %s: %s", _position_text(position), uri, error)
    else:
        log.error("completion at %s in %s: %s", _position_text(position), uri, error)


def _text_of(completion: Completion | None) -> str | None:
    return completion.text or None if completion is not None else None


def _range_text(value: types.Range) -> str:
    return f"{_position_text(value.start)}-{_position_text(value.end)}"


def _position_text(position: types.Position) -> str:
    return f"{position.line}:{position.character}"


def _is_load_error(error: Exception) -> bool:
    return type(error).__name__ == "ModelLoadError"
