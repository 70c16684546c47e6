"""The blocks shape and the workflow shape of an answer frame: ``blocks[]``, kept and patched.

Each block is ``{intended_usage, <kind>_block}`` (a whole block) or ``{intended_usage,
diff_block: {field, patches}}`` (RFC 6902 patches, :mod:`plabs_proto.perplexity.patch`,
against the block named by ``field``).  :class:`Blocks` keeps the answer tracks
(``markdown_block`` by usage), the ``workflow_block``, the plans (``plan_block``) and
the web results, and reads the texts and the search steps from them.
"""

from __future__ import annotations

from typing import Any

from plabs_proto.events import Event
from plabs_proto.perplexity.legacy import Legacy
from plabs_proto.perplexity.patch import append_chunk, apply, parse, touch
from plabs_proto.perplexity.search import Search
from plabs_proto.perplexity.shape import Limits, as_dict, as_list, excerpt, fail
from plabs_proto.perplexity.text import Pair, absorb, grow, has_text

__all__ = ["Blocks", "is_answer_usage"]


def is_answer_usage(usage: str | None) -> bool:
    """Whether a markdown block of this ``intended_usage`` is answer text."""
    return not usage or usage == "ask_text" or "markdown" in usage


class Blocks:
    """The blocks kept from the frames so far, and what the current frame changed in them."""

    __slots__ = (
        "_limits",
        "_markdown",
        "_payloads",
        "_plans",
        "_stale_plans",
        "_stale_workflow",
        "_web",
        "_workflow",
        "grown",
        "stale",
        "touched",
    )

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._markdown: dict[str, dict[str, Any]] = {}  # usage ("" for none) -> markdown_block, first seen first
        self._workflow: Any = None
        self._payloads: list[dict[str, Any]] | None = None  # the workflow's item payloads (None: walk again)
        self._plans: dict[str, Any] = {}
        self._web: dict[str, Any] = {}  # block field -> block holding web_results
        self.touched: dict[int, int] = {}
        """Where this frame changed a chunk list: the list's ``id`` -> the lowest index changed."""
        self._stale_plans: set[str] = set()  # plans changed in this frame
        self._stale_workflow = False  # the workflow's structure or search steps changed in this frame
        self.stale = False
        """Whether this frame changed a plan or the workflow's search steps (see :meth:`steps`)."""
        self.grown: list[Any] | None = None
        """The ask_text track's chunks when this frame only added chunks at the end of answer tracks
        and :meth:`texts` would give them as the answer (with no reasoning), else None."""

    def take(self, blocks: object) -> list[Any] | None:
        """Take the blocks of a frame (None when it has none); return the web results when they changed."""
        self.grown = None
        if self.touched:
            self.touched.clear()
        if self.stale:
            self._stale_plans.clear()
            self._stale_workflow = self.stale = False
        if blocks is None:
            return None
        limits = self._limits
        if not isinstance(blocks, list):
            fail(f"expected 'blocks' to be a list, got {excerpt(blocks)}")
        if len(blocks) > limits.blocks:
            fail(f"expected at most {limits.blocks} blocks in a frame, got {len(blocks)}")
        web_touched = False
        patches_left = limits.patches
        markdown = self._markdown
        most = limits.chunks
        grown: list[Any] | None = None
        short = True  # every block so far took the short path
        for block in blocks:
            # The short path: the blocks of the common frame, a diff_block that adds one chunk at the end
            # of an answer track, and a whole markdown_block whose chunks start just after the ones held.
            # It reads the members it needs directly; a block without them, or with a member of another
            # type (KeyError, TypeError, AttributeError), leaves it before anything changed, for the general
            # path (after it), which names what is wrong.  Taken, a block leaves the tracks as the general
            # path would (tests/test_perplexity_fast_paths.py checks it).
            try:
                if len(block) == 2:
                    usage = block["intended_usage"]
                    doc = markdown[usage]  # (an answer track already held: a str usage)
                    held = doc["chunks"]
                    if "diff_block" in block:
                        value = block["diff_block"]
                        patches = value["patches"]
                        if value["field"] == "markdown_block" and type(patches) is list and len(patches) == 1:
                            patch = patches[0]
                            size = len(held)
                            if patch["op"] == "add" and patch["path"] == f"/chunks/{size}" and size < most and patches_left:
                                held.append(patch["value"])  # (chunks that are not a list have no append)
                                patches_left -= 1
                                if usage == "ask_text":
                                    grown = held
                                continue
                    else:
                        value = block["markdown_block"]
                        chunks = value["chunks"]
                        offset = value["chunk_starting_offset"]
                        if (
                            offset == len(held)
                            and type(offset) is int
                            and type(chunks) is list
                            and offset + len(chunks) <= most
                        ):
                            held.extend(chunks)  # (nor extend)
                            doc = dict(value)
                            doc["chunks"] = held
                            markdown[usage] = doc
                            continue
            except (KeyError, TypeError, AttributeError):
                pass
            short = False
            if type(block) is not dict and not isinstance(block, dict):
                fail(f"expected each block to be a JSON object, got {excerpt(block)}")
            usage = block.get("intended_usage")
            if usage is None:
                usage = ""
            elif type(usage) is not str and not isinstance(usage, str):
                fail(f"expected 'intended_usage' to be a string, got {excerpt(usage)}")
            for field, value in block.items():
                if field == "diff_block":
                    if type(value) is not dict and not isinstance(value, dict):
                        fail(f"expected 'diff_block' to be a JSON object, got {excerpt(value)}")
                    patches_left, kind = self._diff(usage, value, patches_left)
                elif field[-6:] == "_block":
                    kind = self._whole(usage, field, value)
                else:
                    continue
                if kind == "web":
                    web_touched = True
        if short and grown is not None and self._workflow is None:
            whole = markdown["ask_text"].get("answer")
            if whole is None or type(whole) is str:
                self.grown = grown  # (texts() would give (grown, whole), [])
        if not web_touched:
            return None
        citations: list[Any] = []
        for holder in self._web.values():
            results = holder.get("web_results") if isinstance(holder, dict) else None
            if results is not None and not isinstance(results, list):
                fail(f"expected 'web_results' to be a list, got {excerpt(results)}")
            if results:
                citations = results
        return citations

    def steps(self, search: Search, events: list[Event]) -> None:
        """Report to ``search`` the search steps of the plans and the workflow changed in this frame."""
        for usage in [usage for usage in self._plans if usage in self._stale_plans]:
            plan = as_dict(self._plans[usage], "a plan_block")
            for step in as_list(plan.get("steps"), "plan steps", self._limits.steps):
                step = as_dict(step, "a plan step")
                found = as_dict(step.get("search_web_content"), "'search_web_content'")
                search.searched(found.get("queries"), events)
                read = as_dict(step.get("read_results_content"), "'read_results_content'")
                search.read(read.get("urls"), events)
        if self._stale_workflow and self._workflow is not None:
            for payload in self._items():
                if "queries_payload" in payload:
                    search.searched(as_dict(payload["queries_payload"], "'queries_payload'").get("queries"), events)
                if "sources_payload" in payload:
                    search.read(as_dict(payload["sources_payload"], "'sources_payload'").get("sources"), events)

    def texts(self, legacy: Legacy) -> tuple[Pair, list[Pair]]:
        """``(chunks, whole)`` of the answer, and of each piece of reasoning, as they now stand, checked.

        The answer is the workflow's, else the answer track's, else the ``legacy`` answer
        (``(None, None)`` if none).
        """
        answer: Pair = (None, None)
        reasoning: list[Pair] = []
        if self._workflow is not None:
            for payload in self._items():
                text = payload.get("text_payload")
                if text is None:
                    continue
                text = as_dict(text, "a 'text_payload'")
                variant = text.get("variant")
                pair = (text.get("chunks"), text.get("text"))
                if variant == "thinking":
                    reasoning.append(pair)
                elif variant in (None, "", "answer") and answer == (None, None):
                    answer = pair
        if answer == (None, None) and self._markdown:
            # one track: ask_text when it has text, else the first that has, else ask_text, else the first
            doc = self._markdown.get("ask_text")
            if doc is not None and (doc.get("chunks") or doc.get("answer")):
                answer = (doc.get("chunks"), doc.get("answer"))  # (ranked first, as below)
            else:
                tracks = [(doc.get("chunks"), doc.get("answer")) for doc in self._markdown.values()]
                usages = list(self._markdown)
                ranked = sorted(
                    range(len(usages)), key=lambda n: (not has_text(tracks[n]), usages[n] != "ask_text", n)
                )
                answer = tracks[ranked[0]]
        chunks, whole = answer
        if not (chunks or whole):
            answer = legacy.answer() or answer
            chunks, whole = answer
        limit = self._limits.chunks
        if not (type(chunks) is list and len(chunks) <= limit and (whole is None or type(whole) is str)):
            _check_text(answer, limit)  # (refuses what the line above does not take)
        for pair in reasoning:
            _check_text(pair, limit)
        return answer, reasoning

    def _whole(self, usage: str, field: str, value: object) -> str:
        """Take a whole ``<kind>_block``; say what it touched ("text", "steps", "web" or "")."""
        if field == "markdown_block":
            if is_answer_usage(usage):
                self._merge_markdown(usage, value)
                return "text"
            return ""
        if field == "workflow_block":
            if not isinstance(value, dict):
                fail(f"expected 'workflow_block' to be a JSON object, got {excerpt(value)}")
            self._workflow = value
            self._payloads = None
            self._stale_workflow = self.stale = True
            return "steps"
        if field == "plan_block":
            self._keep(self._plans, usage, "plans")
            self._plans[usage] = value
            self._stale_plans.add(usage)
            self.stale = True
            return "steps"
        if field in ("web_result_block", "sources_mode_block"):
            self._web[field] = value
            return "web"
        return ""

    def _merge_markdown(self, usage: str, value: object) -> None:
        if not isinstance(value, dict):
            fail(f"expected 'markdown_block' to be a JSON object, got {excerpt(value)}")
        chunks = value.get("chunks")
        if chunks is not None and not isinstance(chunks, list):
            fail(f"expected 'chunks' to be a list in a markdown_block, got {excerpt(chunks)}")
        offset = value.get("chunk_starting_offset")
        old_doc = self._markdown.get(usage)
        if old_doc is None:
            self._keep(self._markdown, usage, "answer tracks (markdown usages)")
        doc = dict(value)
        old = old_doc.get("chunks") if isinstance(old_doc, dict) else None
        limit = self._limits.chunks
        if chunks is None:
            if isinstance(old, list):
                doc["chunks"] = old
        elif not isinstance(old, list):
            if offset not in (None, 0):
                fail(f"expected 'chunk_starting_offset' 0 in the first markdown_block, got {excerpt(offset)}")
            fresh: list[Any] = []
            grow(fresh, chunks, limit)
            doc["chunks"] = fresh
        else:
            if offset is None:
                absorb(old, chunks, limit)
            elif offset == len(old) and type(offset) is int:
                grow(old, chunks, limit)  # the chunks after the ones held (as below, with nothing to compare)
            else:
                if type(offset) is not int or not 0 <= offset <= len(old):
                    fail(
                        f"expected 'chunk_starting_offset' to be an index from 0 to the {len(old)} chunks held, "
                        f"got {excerpt(offset)}"
                    )
                most = min(len(chunks), len(old) - offset)
                if old[offset : offset + most] == chunks[:most]:
                    same = most  # (the chunks held sent again, as the last frame does: compared at once)
                else:
                    same = 0
                    while old[offset + same] == chunks[same]:
                        same += 1
                if same < len(old) - offset:
                    touch(self.touched, old, offset + same)
                del old[offset + same :]
                grow(old, chunks[same:], limit)
            doc["chunks"] = old
        self._markdown[usage] = doc

    def _keep(self, kept: dict[str, Any], usage: str, what: str) -> None:
        if usage not in kept and len(kept) >= self._limits.blocks:
            fail(f"expected at most {self._limits.blocks} {what}, got {len(kept) + 1}")

    def _diff(self, usage: str, diff: dict[str, Any], patches_left: int) -> tuple[int, str]:
        """Apply a ``diff_block``; return the patches still allowed in this frame and what it touched."""
        field = diff.get("field")
        if field is None:
            field = "markdown_block" if is_answer_usage(usage) else "workflow_block" if usage == "workflow_root" else ""
        if not isinstance(field, str):
            fail(f"expected the diff_block's 'field' to be a string, got {excerpt(field)}")
        patches = diff.get("patches")
        if patches is None:
            patches = []
        if not isinstance(patches, list):
            fail(f"expected 'patches' to be a list, got {excerpt(patches)}")
        if len(patches) > patches_left:
            most = self._limits.patches
            fail(f"expected at most {most} patches in a frame, got {most - patches_left + len(patches)}")
        patches_left -= len(patches)
        if field == "markdown_block":
            if not is_answer_usage(usage):
                return patches_left, ""
            # a first patch may add chunks at once (OmniRoute starts every block with no chunks)
            root: Any = self._markdown.get(usage)
            if not root:
                self._keep(self._markdown, usage, "answer tracks (markdown usages)")
                root = {"chunks": []}
            kind = "text"
        elif field == "workflow_block":
            root = {} if self._workflow is None else self._workflow
            kind = "text"
        elif field == "plan_block":
            self._keep(self._plans, usage, "plans")
            root = self._plans.get(usage, {})
            kind = "steps"
        elif field in ("web_result_block", "sources_mode_block"):
            root = self._web.get(field, {})
            kind = "web"
        else:
            for patch in patches:
                parse(patch)
            return patches_left, ""
        for patch in patches:
            if field == "markdown_block" and append_chunk(root, patch, self._limits.chunks):
                continue
            root, tokens = apply(root, patch, field, self._limits.chunks, self.touched)
            if field == "workflow_block" and (
                len(tokens) <= 5 or "queries_payload" in tokens or "sources_payload" in tokens
            ):
                kind = "steps"  # the structure or the search steps changed
                self._stale_workflow = self.stale = True
                if len(tokens) <= 5:
                    self._payloads = None
        if field == "markdown_block":
            if not isinstance(root, dict):
                fail(f"expected a patched markdown_block to be a JSON object, got {excerpt(root)}")
            self._markdown[usage] = root
        elif field == "workflow_block":
            self._workflow = root
        elif field == "plan_block":
            self._plans[usage] = root
            self._stale_plans.add(usage)
            self.stale = True
        else:
            self._web[field] = root
        return patches_left, kind

    def _items(self) -> list[dict[str, Any]]:
        """The payloads of the workflow's items, in order.

        Kept until a patch changes the workflow's structure (a path of at most five
        tokens: ``/steps/<n>/items/<m>/payload``), so a frame that only adds a
        chunk does not walk the whole workflow again.
        """
        if self._payloads is not None:
            return self._payloads
        found: list[dict[str, Any]] = []
        workflow = as_dict(self._workflow, "the workflow_block")
        limit = self._limits.steps
        for step in as_list(workflow.get("steps"), "workflow steps", limit):
            step = as_dict(step, "a workflow step")
            items = as_list(step.get("items"), "items in a workflow step")
            if len(found) + len(items) > limit:
                fail(f"expected at most {limit} items in the workflow, got {len(found) + len(items)}")
            for item in items:
                item = as_dict(item, "a workflow item")
                found.append(as_dict(item.get("payload"), "an item's 'payload'"))
        self._payloads = found
        return found


def _check_text(pair: Pair, limit: int) -> None:
    """Refuse a text whose chunks are not a list of at most ``limit``, or whose whole text is not a string."""
    chunks, whole = pair
    if chunks is not None and type(chunks) is not list and not isinstance(chunks, list):
        fail(f"expected 'chunks' to be a list, got {excerpt(chunks)}")
    if whole is not None and type(whole) is not str and not isinstance(whole, str):
        fail(f"expected the whole text to be a string, got {excerpt(whole)}")
    if chunks is not None and len(chunks) > limit:
        fail(f"expected at most {limit} chunks in a text, got {len(chunks)}")
