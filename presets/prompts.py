"""What the chat uses from this app: the presets and templates the page offers, and filling a
template when a message is sent (the server fills it; the page only collects the values)."""

from __future__ import annotations

from .models import Preset, PromptTemplate
from .templating import TemplateError, render


def page_config() -> dict:
    """The enabled presets and templates, for the chat page's JSON config."""
    return {
        "presets": [
            {
                "id": p.pk,
                "name": p.name,
                "description": p.description,
                "systemPrompt": p.system_prompt,
                "settings": p.settings(),
            }
            for p in Preset.objects.filter(enabled=True)
        ],
        "promptTemplates": [
            {
                "id": t.pk,
                "name": t.name,
                "title": t.title,
                "description": t.description,
                "version": t.version,
                "variables": t.variables,
            }
            for t in PromptTemplate.objects.filter(enabled=True)
        ],
    }


def fill_template(spec) -> tuple[str, dict]:
    """From a chat.send frame's `template` ({"id": 3, "values": {"text": "..."}}): the filled
    prompt and what to store with the message ({"name", "version"}). Raises TemplateError."""
    if not isinstance(spec, dict) or set(spec) - {"id", "values"}:
        raise TemplateError('template must be an object: {"id": <template id>, "values": {<variable>: <text>}}.')
    template_id = spec.get("id")
    if isinstance(template_id, bool) or not isinstance(template_id, int):
        raise TemplateError("template.id must be a prompt template's id (a whole number).")
    template = PromptTemplate.objects.filter(pk=template_id, enabled=True).first()
    if template is None:
        raise TemplateError(f"There is no prompt template with id {template_id}. Pick one from the list.")
    content = render(template.text, spec.get("values", {}))
    return content, {"name": template.name, "version": template.version}
