"""Initialization: the block initializers, the named schemes, the plan and its seeded draws.

- onethread: the pool of one-thread workers that makes drawn values independent of thread counts;
- initializers: the block initializers (torch.nn.init style, one formula each) and their registry;
- schemes: the rule syntax and the scheme registry;
- arguments: a rule's arguments bound to its initializer and checked;
- distributed: parameters one process holds in part (DTensor shards, FSDP) or not yet (meta);
- planning: plan (which rule hits which block) and apply (seeded draws per parameter and block).
"""
