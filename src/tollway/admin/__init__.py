"""The control plane (``tollway serve``): admin tokens, roles, the audit log, the admin API.

- `tollway.admin.roles`: the roles, the RBAC matrix (`PERMISSIONS`), `require`, `in_scope`;
- `tollway.admin.tokens`: admin tokens, kept as hashes, as ledger flows;
- `tollway.admin.audit`: the append-only, hash-chained audit log, as ledger flows;
- `tollway.admin.store`: `AdminStore` / `AsyncAdminStore`, the flows run on a ledger;
- `tollway.admin.policies`: versioned policies, activations and pilots, overrides.
"""
