from django.db import migrations, models
from django.utils.text import slugify


def partner_slugs_fill(apps, schema_editor):
    Partner = apps.get_model("tenants", "Partner")
    taken = set()
    for partner in Partner.objects.order_by("id"):
        base = (slugify(partner.name) or "partner")[:50]
        slug, n = base, 1
        while slug in taken:
            n += 1
            slug = f"{base}-{n}"
        taken.add(slug)
        partner.slug = slug
        partner.save(update_fields=["slug"])


class Migration(migrations.Migration):
    dependencies = [("tenants", "0003_governance_deactivation_and_used_jtis")]

    operations = [
        migrations.AddField(
            model_name="partner",
            name="slug",
            field=models.SlugField(db_index=False, max_length=60, null=True),
        ),
        migrations.RunPython(partner_slugs_fill, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="partner",
            name="slug",
            field=models.SlugField(max_length=60, unique=True),
        ),
        migrations.AddField(
            model_name="accesstoken",
            name="purpose",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
    ]
