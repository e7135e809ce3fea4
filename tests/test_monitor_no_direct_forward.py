"""The service calls models only through ``model(x)``: a direct ``.forward(`` call skips every forward
hook, so the monitor would see nothing of that pass (docs/monitoring.md). Scans ``service/`` with the
tokenizer, so comments, docstrings and ``def forward`` never count."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

SERVICE = Path(__file__).resolve().parent.parent / "service"


def direct_forward_calls(source: str) -> list[int]:
    """Line numbers of ``<expr>.forward(`` in Python source."""
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type != tokenize.NL]
    return [
        name.start[0]
        for dot, name, paren in zip(tokens, tokens[1:], tokens[2:], strict=False)
        if dot.string == "."
        and name.type == tokenize.NAME
        and name.string == "forward"
        and paren.string == "("
    ]


def test_scanner_finds_calls_and_ignores_definitions_comments_and_strings() -> None:
    source = '''
class M:
    def forward(self, x):  # calls self.forward( in a comment
        """Never call child.forward(x)."""
        return self.child.forward(x)

y = model . forward (x)
z = model.forward
'''
    assert direct_forward_calls(source) == [5, 7]


def test_service_never_calls_forward_directly() -> None:
    offenders = [
        f"{path.relative_to(SERVICE.parent)}:{line}"
        for path in sorted(SERVICE.rglob("*.py"))
        for line in direct_forward_calls(path.read_text())
    ]
    assert not offenders, f"call models as model(x), not .forward(): {offenders}"
