"""Prices people can see and edit: price versions kept in the store (`book`), the canonical
models document and its diffs (`document`). See docs/pricing.md."""
