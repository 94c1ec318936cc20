"""The built-in prompt templates: summarize, translate, classify, extract."""

from django.db import migrations

BUILTIN = [
    {
        "name": "summarize",
        "title": "Summarize",
        "description": "A short summary of a text.",
        "text": "Summarize the following text in a few sentences. Keep the key facts and names.\n\nText:\n{{text}}",
    },
    {
        "name": "translate",
        "title": "Translate",
        "description": "Translate a text into a language.",
        "text": ("Translate the following text into {{language}}. Reply with the translation only.\n\nText:\n{{text}}"),
    },
    {
        "name": "classify",
        "title": "Classify",
        "description": "Pick one of the given labels for a text.",
        "text": (
            "Classify the text below into exactly one of these labels: {{labels}}.\n"
            "Answer in exactly this format, with nothing else:\n"
            "Label: <one of the labels>\n\nText:\n{{text}}"
        ),
    },
    {
        "name": "extract",
        "title": "Extract as JSON",
        "description": "Pull the given fields out of a text as a JSON object.",
        "text": (
            "Extract these fields from the text below: {{fields}}.\n"
            "Reply with a single JSON object whose keys are exactly those fields; use null for a field "
            "the text does not give. No other text.\n\nText:\n{{text}}"
        ),
    },
]


def add_builtins(apps, schema_editor):
    PromptTemplate = apps.get_model("presets", "PromptTemplate")
    for row in BUILTIN:
        PromptTemplate.objects.get_or_create(name=row["name"], defaults=row)


def remove_builtins(apps, schema_editor):
    PromptTemplate = apps.get_model("presets", "PromptTemplate")
    PromptTemplate.objects.filter(name__in=[row["name"] for row in BUILTIN], version=1).delete()


class Migration(migrations.Migration):
    dependencies = [("presets", "0001_initial")]

    operations = [migrations.RunPython(add_builtins, remove_builtins)]
