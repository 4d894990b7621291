"""A tiny DOM for checking generated HTML/SVG without third-party parsers: ``select(root, "svg.chart-p95 path")``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = {"meta", "br", "link", "img", "input", "hr", "source", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    text: str = ""

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def iter(self) -> list[Node]:
        out: list[Node] = []
        for c in self.children:
            out.append(c)
            out += c.iter()
        return out

    def all_text(self) -> str:
        return self.text + "".join(c.all_text() for c in self.children)

    def matches(self, simple: str) -> bool:
        tag, *classes = simple.split(".")
        return (not tag or tag == self.tag) and all(c in self.classes for c in classes)


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.cur = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.cur.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.cur))

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.cur
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.cur = node.parent

    def handle_data(self, data: str) -> None:
        self.cur.text += data


def parse(html: str) -> Node:
    b = _Builder()
    b.feed(html)
    b.close()
    return b.root


def select(root: Node, selector: str) -> list[Node]:
    """Descendant selectors of ``tag.class.class`` parts only, e.g. ``svg.chart-p95 path.series-candidate``."""
    nodes = [root]
    for part in selector.split():
        nodes = [d for n in nodes for d in n.iter() if d.matches(part)]
        seen: set[int] = set()
        nodes = [n for n in nodes if not (id(n) in seen or seen.add(id(n)))]  # type: ignore[func-returns-value]
    return nodes


def path_vertices(d: str) -> list[tuple[float, float]]:
    """Vertices of an SVG path made of M/L commands."""
    return [(float(x), float(y)) for x, y in re.findall(r"[ML]\s*(-?[\d.]+)[ ,](-?[\d.]+)", d)]
