"""The tools an `agent` task may name in `spec.agent.tools`, as LangChain tools.

- `calculator`: arithmetic, evaluated safely by walking the expression's `ast` (never `eval`), with
  bounded expression length and number size so no input can hang the step; bad input comes back as a
  `calculator error: ...` string the model can read and correct.
- `retriever`: built by `retriever_tool(search)` from the task's retrieval step (a callable
  `search(query) -> list[Hit]`); it shows the model each passage with its chunk id, and hands the
  hits themselves back as the tool message's artifact so the agent loop can record what was seen.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from langchain_core.tools import BaseTool, StructuredTool, tool

from tasks.inference.documents import Hit


class HitLike(Protocol):
    """Anything with a `Hit`'s fields (the retrieval code's own results qualify)."""

    @property
    def chunk_id(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def source(self) -> str: ...


Search = Callable[[str], Sequence[HitLike]]

# --- calculator --------------------------------------------------------------------------------

MAX_EXPRESSION_CHARS = 500
# the largest integer any step may produce (~1200 decimal digits): keeps `9**9**9` and friends instant
MAX_INT_BITS = 4096
_HINT = "use numbers and + - * / // % ** ( )"

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "floor": math.floor,
    "ceil": math.ceil,
    "log": math.log,
    "exp": math.exp,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}
_FUNCTION_HINT = f"{_HINT}, and the functions {', '.join(sorted(_FUNCTIONS))}"


class CalculatorError(ValueError):
    """An expression the calculator refuses or cannot evaluate; the message is meant for the model."""


def _check_size(value: Any) -> Any:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalculatorError(f"the result is too large (more than {MAX_INT_BITS} bits)")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("the result is not a finite number")
    return value


def _power(base: Any, exponent: Any) -> Any:
    # refuse before computing: an int power's size is known from the operands
    ints = isinstance(base, int) and isinstance(exponent, int)
    if ints and abs(base) > 1 and exponent > 0 and (abs(base).bit_length() - 1) * exponent > MAX_INT_BITS:
        raise CalculatorError(f"the result is too large (more than {MAX_INT_BITS} bits)")
    if isinstance(exponent, int | float) and abs(exponent) > 10_000:
        raise CalculatorError("the exponent is too large (at most 10000)")
    result = operator.pow(base, exponent)
    if isinstance(result, complex):
        raise CalculatorError("the result is a complex number (a negative number to a fractional power)")
    return result


def _eval(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CalculatorError(f"{node.value!r} is not a number — {_HINT}")
        return _check_size(node.value)
    if isinstance(node, ast.BinOp):
        op = _BINARY.get(type(node.op))
        if op is None:
            raise CalculatorError(f"operator {type(node.op).__name__} is not allowed — {_HINT}")
        left, right = _eval(node.left), _eval(node.right)
        if op is operator.pow:
            return _check_size(_power(left, right))
        return _check_size(op(left, right))
    if isinstance(node, ast.UnaryOp):
        unary = _UNARY.get(type(node.op))
        if unary is None:
            raise CalculatorError(f"operator {type(node.op).__name__} is not allowed — {_HINT}")
        return _check_size(unary(_eval(node.operand)))
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise CalculatorError(f"name {node.id!r} is not allowed — {_HINT}")
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in _FUNCTIONS:
            shown = repr(name) if name else "this call"
            raise CalculatorError(f"function {shown} is not allowed — {_FUNCTION_HINT}")
        if node.keywords or not 1 <= len(node.args) <= 2 or (len(node.args) == 2 and name != "round"):
            raise CalculatorError(f"{name}() takes one number (round: a number and a number of digits)")
        args = [_eval(arg) for arg in node.args]
        if name == "round" and len(args) == 2 and not isinstance(args[1], int):
            raise CalculatorError("round()'s second argument must be a whole number of digits")
        return _check_size(_FUNCTIONS[name](*args))
    raise CalculatorError(f"{type(node).__name__} is not allowed — {_HINT}")


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression; raises `CalculatorError` with a model-readable reason."""
    expression = expression.strip()
    if not expression:
        raise CalculatorError(f"the expression is empty — {_HINT}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(
            f"the expression is too long ({len(expression)} characters, at most {MAX_EXPRESSION_CHARS})"
        )
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise CalculatorError(f"not a valid expression ({exc.msg}) — {_HINT}") from exc
    except (RecursionError, MemoryError) as exc:
        raise CalculatorError("the expression is nested too deeply") from exc
    try:
        result: int | float = _eval(tree)
    except CalculatorError:
        raise
    except ZeroDivisionError as exc:
        raise CalculatorError("division by zero") from exc
    except OverflowError as exc:
        raise CalculatorError("the result is too large for a floating-point number") from exc
    except (ArithmeticError, ValueError, TypeError) as exc:
        raise CalculatorError(str(exc) or type(exc).__name__) from exc
    except RecursionError as exc:
        raise CalculatorError("the expression is nested too deeply") from exc
    return result


def _format_number(value: int | float) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.12g}"
    return str(value)


@tool("calculator")
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression and return its value.

    Use it for any arithmetic instead of computing in your head. The expression may use numbers,
    + - * / // % ** and parentheses, the constants pi and e, and the functions sqrt, abs, round,
    floor, ceil, log and exp; for example "(17 + 4) * 3" or "round(sqrt(2), 3)". Variables and
    other names are not allowed. On bad input it returns a message starting "calculator error:".
    """
    try:
        return _format_number(evaluate(expression))
    except CalculatorError as exc:
        return f"calculator error: {exc}"


# --- retriever ---------------------------------------------------------------------------------

RETRIEVER_DESCRIPTION = (
    "Search the task's document corpus (the documents configured in spec.retrieval) for passages "
    "relevant to a query. Use it to look up facts the answer should be based on, rather than answering "
    "from memory. Returns the best-matching passages, each labelled with its chunk id [chunk_id] and "
    "source; cite the chunk ids you rely on. Input: a short search query."
)


def _as_hit(hit: HitLike) -> Hit:
    if isinstance(hit, Hit):
        return hit
    return Hit(chunk_id=str(hit.chunk_id), text=str(hit.text), score=float(hit.score), source=str(hit.source))


def format_hits(hits: Sequence[Hit]) -> str:
    """The passages as the model sees them: one block per hit, headed by its chunk id and source."""
    if not hits:
        return "No passages matched the query. Try different words."
    return "\n\n".join(f"[{hit.chunk_id}] (source: {hit.source})\n{hit.text}" for hit in hits)


def retriever_tool(search: Search, *, description: str = RETRIEVER_DESCRIPTION) -> BaseTool:
    """The `retriever` tool over `search(query) -> list[Hit]`.

    The tool message's content is the formatted passages; its artifact is the `list[Hit]`, which
    the model never sees but the agent loop records.
    """

    def retrieve(query: str) -> tuple[str, list[Hit]]:
        hits = [_as_hit(hit) for hit in search(query)]
        return format_hits(hits), hits

    return StructuredTool.from_function(
        func=retrieve,
        name="retriever",
        description=description,
        response_format="content_and_artifact",
    )


# --- registry ----------------------------------------------------------------------------------

TOOLS: dict[str, str] = {
    "calculator": "safe arithmetic: numbers, + - * / // % ** ( ), sqrt/abs/round/floor/ceil/log/exp",
    "retriever": "searches the task's document corpus (needs spec.retrieval) and returns passages with chunk ids",
}


def build_tools(names: list[str], search: Search | None = None) -> list[BaseTool]:
    """The LangChain tools for `spec.agent.tools`, in the order named (a repeated name counts once)."""
    tools: list[BaseTool] = []
    for name in dict.fromkeys(names):
        if name not in TOOLS:
            raise KeyError(f"unknown agent tool {name!r}: the valid tools are {', '.join(sorted(TOOLS))}")
        if name == "calculator":
            tools.append(calculator)
        elif name == "retriever":
            if search is None:
                raise ValueError(
                    "the retriever tool needs spec.retrieval (the documents and index to search): "
                    "add spec.retrieval, or remove retriever from spec.agent.tools"
                )
            tools.append(retriever_tool(search))
    return tools
