"""The lattice's identities: NATS operator, accounts and users (nkeys and JWTs).

NATS's own decentralized auth, not a scheme of ours: the server trusts one
operator, the operator signs the accounts, an account signs its users, and a
client proves it is a user with a ``.creds`` file (the user's JWT and seed).
"""
