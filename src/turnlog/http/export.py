"""Conversation export, rendered on the server from stored rows only."""

from __future__ import annotations

import re
from collections.abc import Sequence

from turnlog_reducer import ReasoningBlock, TextBlock, ToolCallBlock

from turnlog.log.projection import Conversation, Message

SUPPORTED = ("en", "ru", "pl")

_WORDS: dict[str, dict[str, str]] = {
    "en": {
        "untitled": "Conversation",
        "model": "Model",
        "user": "You",
        "assistant": "Assistant",
        "tool": "Tool result",
        "system": "System",
        "system_prompt": "System prompt",
        "reasoning": "Reasoning",
        "tool_call": "Tool call",
        "edited": "edited",
        "generating": "still generating",
        "interrupted": "interrupted",
        "error": "failed",
        "aborted": "stopped",
        "metadata": "Metadata",
        "up": "rated good",
        "down": "rated bad",
    },
    "ru": {
        "untitled": "Разговор",
        "model": "Модель",
        "user": "Вы",
        "assistant": "Ассистент",
        "tool": "Результат инструмента",
        "system": "Система",
        "system_prompt": "Системный промпт",
        "reasoning": "Рассуждение",
        "tool_call": "Вызов инструмента",
        "edited": "изменено",
        "generating": "ещё генерируется",
        "interrupted": "прервано",
        "error": "ошибка",
        "aborted": "остановлено",
        "metadata": "Метаданные",
        "up": "оценено хорошо",
        "down": "оценено плохо",
    },
    "pl": {
        "untitled": "Rozmowa",
        "model": "Model",
        "user": "Ty",
        "assistant": "Asystent",
        "tool": "Wynik narzędzia",
        "system": "System",
        "system_prompt": "Prompt systemowy",
        "reasoning": "Rozumowanie",
        "tool_call": "Wywołanie narzędzia",
        "edited": "edytowano",
        "generating": "wciąż generowane",
        "interrupted": "przerwane",
        "error": "błąd",
        "aborted": "zatrzymane",
        "metadata": "Metadane",
        "up": "oceniono dobrze",
        "down": "oceniono źle",
    },
}


def normalize_lang(tag: str | None) -> str:
    """Any BCP 47 tag (``en-US``, ``ru_RU``, ``pl``, junk) to a supported language; never
    an error: unknown or malformed tags fall back to English."""
    if not tag:
        return "en"
    primary = tag.strip().replace("_", "-").split("-", 1)[0].lower()
    return primary if primary in SUPPORTED else "en"


# A line that Markdown would read as a heading (ATX `# x` with up to three spaces first, or a
# setext underline `===`/`---`), or that would open a code fence or an HTML block and so
# swallow the headings after it. User text must not make or hide the export's headings.
_HEADING = re.compile(r"^( {0,3})(#{1,6}(?=\s|$)|=+\s*$|-+\s*$|`{3,}|~{3,}|<)")


def literal(text: str) -> str:
    """``text`` with every line that would be a Markdown heading escaped (``\\#``), so what
    a user typed can never forge the export's headings."""
    return "\n".join(_HEADING.sub(r"\1\\\2", line) for line in text.split("\n"))


def markdown(conv: Conversation, messages: Sequence[Message], lang: str) -> str:
    w = _WORDS.get(lang, _WORDS["en"])
    title = (conv.title or w["untitled"]).replace("\n", " ")  # one line: one heading
    out = [f"# {title}", "", f"_{w['model']}: {conv.model}_", ""]
    if conv.metadata:
        out += [f"**{w['metadata']}**", ""]
        out += [f"- {_one_line(k)}: {_one_line(v)}" for k, v in sorted(conv.metadata.items())]
        out.append("")
    if conv.system_prompt:
        out += [f"## {w['system_prompt']}", "", literal(conv.system_prompt), ""]
    for m in messages:
        heading = w[m.role] + (f" ({m.tool_name})" if m.role == "tool" and m.tool_name else "")
        notes = []
        if m.edited_content is not None:
            notes.append(w["edited"])
        if m.status != "completed":
            notes.append(w[m.status])
        if m.feedback is not None:
            notes.append(w[m.feedback.rating])
        out.append(f"## {heading}" + (f" _({', '.join(notes)})_" if notes else ""))
        out.append("")
        if m.status == "error" and m.error:
            out += [f"> **{w['error']}:** {literal(m.error).replace(chr(10), ' ')}", ""]
        if m.role == "assistant":
            for block in m.blocks:
                if isinstance(block, TextBlock):
                    out += [block.text, ""]
                elif isinstance(block, ReasoningBlock):
                    quoted = "\n".join("> " + line for line in block.text.splitlines())
                    out += [f"> **{w['reasoning']}**", ">", quoted, ""]
                elif isinstance(block, ToolCallBlock):
                    args = block.arguments_text or "{}"
                    out += [f"**{w['tool_call']}: `{block.name}`**", "", "```json", args, "```", ""]
            if m.feedback is not None and m.feedback.comment:
                out += [f"> {_one_line(m.feedback.comment)}", ""]
        else:
            text = m.edited_content if m.edited_content is not None else (m.content or "")
            out += [literal(text), ""]
    return "\n".join(out).rstrip() + "\n"


def _one_line(text: str) -> str:
    """User text on one line, unable to start a heading or a block of its own."""
    return literal(" ".join(text.split()))
