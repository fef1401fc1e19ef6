"""Search index tables: one row per value a search parameter extracts from a resource.

Every row carries the resource type and parameter code first, so each btree index
starts with the equality columns a query always has, then the value being compared.
Rows belong to the current version of a resource and go with it (CASCADE).
"""

from django.db import models

from fhirplatform.fhir.models import Resource
from fhirplatform.fhir.search.registry import ParamType


class IndexRow(models.Model):
    resource = models.ForeignKey(Resource, on_delete=models.CASCADE, related_name="+")
    resource_type = models.CharField(max_length=64)
    param = models.CharField(max_length=64)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.resource_type}.{self.param} of resource {self.resource_id}"


class TokenIndex(IndexRow):
    system = models.CharField(max_length=255, default="")
    code = models.CharField(max_length=255)
    text = models.CharField(max_length=255, default="")  # normalised display/text, for :text

    class Meta:
        indexes = [
            models.Index(
                fields=["resource_type", "param", "code", "system"], name="search_token_code"
            ),
            models.Index(fields=["resource"], name="search_token_resource"),
        ]


class StringIndex(IndexRow):
    value = models.CharField(max_length=255)  # lower-cased, accents folded
    exact = models.CharField(max_length=255)

    class Meta:
        indexes = [
            # LIKE 'prefix%' on a non-C collation needs the pattern operator class.
            models.Index(
                fields=["resource_type", "param", "value"],
                opclasses=["text_ops", "text_ops", "varchar_pattern_ops"],
                name="search_string_prefix",
            ),
            models.Index(fields=["resource_type", "param", "exact"], name="search_string_exact"),
            models.Index(fields=["resource"], name="search_string_resource"),
        ]


class DateIndex(IndexRow):
    low = models.DateTimeField()  # inclusive
    high = models.DateTimeField()  # exclusive

    class Meta:
        indexes = [
            models.Index(fields=["resource_type", "param", "low", "high"], name="search_date_low"),
            models.Index(fields=["resource_type", "param", "high"], name="search_date_high"),
            models.Index(fields=["resource"], name="search_date_resource"),
        ]


class ReferenceIndex(IndexRow):
    target_type = models.CharField(max_length=64, default="")
    target_id = models.CharField(max_length=64, default="")
    url = models.CharField(max_length=255, default="")  # external or canonical references

    class Meta:
        indexes = [
            models.Index(
                fields=["resource_type", "param", "target_id", "target_type"],
                name="search_ref_target",
            ),
            # _revinclude and the reverse side of chains look up by target first.
            models.Index(fields=["target_type", "target_id", "param"], name="search_ref_reverse"),
            models.Index(fields=["resource_type", "param", "url"], name="search_ref_url"),
            models.Index(fields=["resource"], name="search_ref_resource"),
        ]


class NumberIndex(IndexRow):
    value = models.DecimalField(max_digits=38, decimal_places=12)

    class Meta:
        indexes = [
            models.Index(fields=["resource_type", "param", "value"], name="search_number_value"),
            models.Index(fields=["resource"], name="search_number_resource"),
        ]


class QuantityIndex(IndexRow):
    value = models.DecimalField(max_digits=38, decimal_places=12)
    system = models.CharField(max_length=255, default="")
    code = models.CharField(max_length=255, default="")  # code, else unit

    class Meta:
        indexes = [
            models.Index(fields=["resource_type", "param", "value"], name="search_quantity_value"),
            models.Index(fields=["resource"], name="search_quantity_resource"),
        ]


class UriIndex(IndexRow):
    uri = models.CharField(max_length=512)

    class Meta:
        indexes = [
            models.Index(fields=["resource_type", "param", "uri"], name="search_uri_value"),
            models.Index(fields=["resource"], name="search_uri_resource"),
        ]


# The index table of each parameter type.
INDEX_MODEL: dict[ParamType, type[IndexRow]] = {
    ParamType.TOKEN: TokenIndex,
    ParamType.STRING: StringIndex,
    ParamType.DATE: DateIndex,
    ParamType.REFERENCE: ReferenceIndex,
    ParamType.NUMBER: NumberIndex,
    ParamType.QUANTITY: QuantityIndex,
    ParamType.URI: UriIndex,
}
