"""SimilarityIndex internals against the definitions they shortcut, on the real-data artifact."""

from __future__ import annotations

import numpy as np
import pytest

from similarity_api.index import SHARED, SimilarityIndex


def test_shared_is_the_top_of_every_per_feature_term(real_index: SimilarityIndex) -> None:
    """``shared`` is the SHARED largest positive terms of ``x_hat_q * x_hat_n`` over ALL features
    (the service only looks at a pool of the query's largest features), largest first."""
    a = real_index.artifact
    components = np.asarray(a.components, dtype=np.float64)
    embeddings = np.asarray(a.embeddings, dtype=np.float64)
    names = a.space.names
    prefix = {"course": "course", "tag": "tag", "interest": "interest", "assessment": "assessment"}
    handles = np.asarray(a.item_user)
    checked = 0
    for item in np.random.default_rng(11).choice(len(handles), size=60, replace=False):
        q_hat = embeddings[item] @ components
        for n in real_index.similar_to_user(int(handles[item]), 5):
            other = int(a.user_item[real_index.row_of(n.user_handle)])
            terms = q_hat * (embeddings[other] @ components)
            order = np.lexsort((np.arange(terms.size), -terms))[:SHARED]
            want = [
                (f"{prefix[a.space.kind_of(int(j))]}:{names[j]}", float(terms[j]))
                for j in order
                if terms[j] > 0
            ]
            got = [(c.feature, c.contribution) for c in n.shared]
            assert [f for f, _ in got] == [f for f, _ in want]
            assert [c for _, c in got] == pytest.approx([c for _, c in want], abs=1e-9)
            assert sum(c for _, c in got) + n.remainder == pytest.approx(n.similarity, abs=1e-6)
            checked += 1
    assert checked == 300
