"""Cursor pages as OpenAI's lists answer them: `{"object": "list", "data", "has_more", "first_id",
"last_id"}`, read with `after` (the last id of the previous page) and `limit`. The SDK's
auto-paging asks again with `after` = the last item's id until `has_more` is false.

An id is a prefix and a number (`file-12`, `ftjob-3`, `ftckpt-3-40`); the number orders the list,
so a cursor needs no lookup and an id that is gone (or another user's) still pages correctly."""

from __future__ import annotations

from dataclasses import dataclass

from chatsite.ids import parse_id

from .errors import ApiError


def id_number(ident, prefix: str) -> int | None:
    """12 for `file-12` with prefix "file-"; None for anything else."""
    number = str(ident).removeprefix(prefix)
    return None if number == str(ident) else parse_id(number)


@dataclass(frozen=True)
class Page:
    """What a list request asked for: the page after the item numbered `after`, in this order."""

    after: int | None
    limit: int
    descending: bool = True


def page_request(request, prefix: str, *, default_limit: int, max_limit: int, ordered: bool = False) -> Page:
    """`after`, `limit` (and, when `ordered`, `order` = asc|desc) from the query string."""
    after = request.GET.get("after")
    if after:
        number = id_number(after, prefix)
        if number is None:
            raise ApiError(400, f"after must be an id from this list ({prefix}...), got {after!r}.", param="after")
        after = number
    raw_limit = request.GET.get("limit")
    limit = default_limit
    if raw_limit:
        limit = parse_id(raw_limit)
        if limit is None or not 1 <= limit <= max_limit:
            raise ApiError(400, f"limit must be a whole number from 1 to {max_limit}.", param="limit")
    order = request.GET.get("order", "desc") if ordered else "desc"
    if order not in ("asc", "desc"):
        raise ApiError(400, "order must be asc or desc.", param="order")
    return Page(after=after or None, limit=limit, descending=order == "desc")


def paginate(queryset, page: Page) -> tuple[list, bool]:
    """One page of rows ordered by primary key: (rows, has_more)."""
    if page.after is not None:
        queryset = queryset.filter(pk__lt=page.after) if page.descending else queryset.filter(pk__gt=page.after)
    rows = list(queryset.order_by("-pk" if page.descending else "pk")[: page.limit + 1])
    return rows[: page.limit], len(rows) > page.limit


def paginate_numbered(items: list, number, page: Page) -> tuple[list, bool]:
    """The same over a list in memory; `number(item)` is the number in the item's id."""
    items = sorted(items, key=number, reverse=page.descending)
    if page.after is not None:
        items = [i for i in items if (number(i) < page.after if page.descending else number(i) > page.after)]
    return items[: page.limit], len(items) > page.limit


def list_body(data: list[dict], has_more: bool) -> dict:
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
