"""The in-process cache of validated access tokens, and the generation that invalidates it.

CALLER_GENERATION_KEY is a Redis counter bumped after every committed change that can
refuse a live token (a token, client or grant revoked, a tenant suspended, a grant's
scopes narrowed). The limiter's admission reads it in the same round trip that admits the
request, so a cached token is checked against it on every request at no extra cost.
"""

CALLER_GENERATION_KEY = "fp:auth:generation"
