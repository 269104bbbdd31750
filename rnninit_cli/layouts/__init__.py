"""Layout knowledge: which tensors are recurrent, how their gates lie, and the names a user matches.

- layer: a recurrent layer, its parameters by kind and their gate (and head) blocks;
- heads: per-head gate tensors (xLSTM, RG-LRU): which stored axis holds gates, heads, rows and columns;
- patterns: user regexes (`--only`, layout files), matched in linear time;
- views: effective parameters assembled from the tensors a file stores (weight norm, split or fused gates);
- discovery: recurrent layers found by their names and shapes (torch.nn and the built-in layouts), and their blocks;
- declared: layouts of hand-written cells, declared by the user (`--layout`, layout files) or built in (the per-head
  ones of xLSTM, RecurrentGemma and transformers' xLSTM found without being asked for);
- headed: the layer a per-head declared cell makes (its forms tried in order, its place in a stack of blocks).
"""
