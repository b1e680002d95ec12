"""Fault-injection tests: every fault ends with rows == inputs, no duplicate keys, one clear message."""
