"""Black-box tests: the running sipswitch server driven by real SIP peers."""
