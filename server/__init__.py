"""modeldrop's upload server: the tus 1.0 protocol on Starlette, the staging store, locks and admission."""
