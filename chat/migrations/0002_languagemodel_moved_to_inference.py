"""LanguageModel now lives in the inference app (same table, same rows): point the foreign keys
at it and drop chat's copy from Django's state. Nothing changes in the database here."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("chat", "0001_initial"),
        ("inference", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="conversation",
                    name="model",
                    field=models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        to="inference.languagemodel",
                    ),
                ),
                migrations.AlterField(
                    model_name="message",
                    name="model",
                    field=models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        to="inference.languagemodel",
                    ),
                ),
                migrations.DeleteModel(name="LanguageModel"),
            ],
            database_operations=[],
        ),
    ]
