import torch

from lipreg.callbacks.predictions import interleave_shards


def test_interleaving_the_shards_restores_the_split_order():
    total, world = 7, 3
    samples = torch.arange(total * 2.0).view(total, 2)
    # process r predicted samples r, r + 3, …; the shorter shards are padded to the longest
    shards = torch.zeros(world, 3, 2)
    for rank in range(world):
        shard = samples[rank::world]
        shards[rank, : len(shard)] = shard
    assert torch.equal(interleave_shards(shards, total), samples)
