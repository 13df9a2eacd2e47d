"""Small example plugins shipped with Weir, written only against the public API.

`rate_limit` limits requests per client credential; `inject_headers` adds configured
headers and metadata. Both are registered in the `weir.plugins` entry-point group and are
inactive until listed in proxy.yaml.
"""
