"""The answer's search steps and citations: each query and source reported once, the citations when they change."""

from __future__ import annotations

from typing import Any

from plabs_proto.events import Citations, Event, SearchQueries, SourcesRead
from plabs_proto.perplexity.shape import as_list, excerpt, fail

__all__ = ["Search", "source"]


class Search:
    """The queries searched, the sources read and the citations reported so far."""

    __slots__ = ("_queries", "_sources", "citations")

    def __init__(self) -> None:
        self._queries: set[str] = set()
        self._sources: set[str] = set()
        self.citations: tuple[Any, ...] = ()

    def searched(self, queries: object, events: list[Event]) -> None:
        """Report the queries (strings or ``{"query": str}``) not reported before."""
        new: list[str] = []
        for query in as_list(queries, "queries"):
            if isinstance(query, dict):
                query = query.get("query")
            if not isinstance(query, str):
                fail(f"expected a query to be a string or {{'query': str}}, got {excerpt(query)}")
            if query and query not in self._queries:
                self._queries.add(query)
                new.append(query)
        if new:
            events.append(SearchQueries(queries=tuple(new)))

    def read(self, sources: object, events: list[Event]) -> None:
        """Report the sources (URLs or objects) whose URLs were not reported before."""
        new: list[dict[str, str]] = []
        for each in as_list(sources, "sources"):
            entry = source(each)
            if entry["url"] and entry["url"] not in self._sources:
                self._sources.add(entry["url"])
                new.append(entry)
        if new:
            events.append(SourcesRead(sources=tuple(new)))

    def cite(self, results: list[Any], events: list[Event]) -> None:
        """Report the web results as the citations, when they differ from the ones last reported."""
        cited = tuple(source(result) for result in results)
        if cited != self.citations:
            self.citations = cited
            events.append(Citations(citations=cited))


def source(value: object) -> dict[str, str]:
    """``{"url", "title"}`` of a source given as a URL or as an object with ``url`` and ``name`` (or ``title``)."""
    if isinstance(value, str):
        return {"url": value, "title": ""}
    if not isinstance(value, dict):
        fail(f"expected a source to be a URL or a JSON object, got {excerpt(value)}")
    url = value.get("url")
    title = value.get("name", value.get("title"))
    if url is None:
        url = ""
    if title is None:
        title = ""
    if not isinstance(url, str) or not isinstance(title, str):
        fail(f"expected a source's 'url' and 'name' to be strings, got {excerpt(value)}")
    return {"url": url, "title": title}
