"""Development tooling, outside the product packages: the local KRaft broker (`canary kafka start`), the
one-command demo and its console story, and the harness the tests and bench/ share (real services as
processes, hostile records, signing helpers). Services never import it."""
