"""The four plans a fresh install offers. Rates are cost units per minute."""

from django.db import migrations

PLANS = [
    # name, description, read, search, write, history, batch, export/h, poll, conc, daily, priority
    ("sandbox", "Low limits for trying things", 60, 20, 20, 10, 5, 2, 30, 2, 5_000, 10),
    ("standard", "Production default", 600, 200, 120, 60, 30, 6, 60, 10, 200_000, 50),
    (
        "premium",
        "High-volume integrations",
        3_000,
        1_000,
        600,
        300,
        120,
        20,
        120,
        30,
        2_000_000,
        70,
    ),
    (
        "enterprise",
        "Negotiated, highest limits",
        12_000,
        4_000,
        2_400,
        1_200,
        600,
        60,
        300,
        100,
        20_000_000,
        90,
    ),
]


def create_plans(apps, schema_editor):
    RatePlan = apps.get_model("tenants", "RatePlan")
    for (
        name,
        description,
        read,
        search,
        write,
        history,
        batch,
        export,
        poll,
        conc,
        daily,
        priority,
    ) in PLANS:
        RatePlan.objects.update_or_create(
            name=name,
            defaults={
                "description": description,
                "read_per_minute": read,
                "search_per_minute": search,
                "write_per_minute": write,
                "history_per_minute": history,
                "batch_per_minute": batch,
                "export_per_hour": export,
                "export_poll_per_minute": poll,
                "concurrency": conc,
                "daily_quota": daily,
                "priority": priority,
            },
        )


class Migration(migrations.Migration):
    dependencies = [("tenants", "0001_initial")]
    operations = [migrations.RunPython(create_plans, migrations.RunPython.noop)]
