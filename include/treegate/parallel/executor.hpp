// treegate/parallel/executor.hpp — the executor interface the layers' batched forward runs on,
// and the serial executor. No threads here: layers depend on this header only.
//
// An executor runs a job split into `pieces` independent pieces:
//     int size() const;                      // workers that may run pieces (>= 1)
//     template <class F> void run(index_t pieces, F&& fn);   // fn(piece, worker), worker < size()
// `run` returns when every piece has run, and the pieces' writes are visible to the caller.
// Layers cut their work into pieces that do not depend on size(), and each piece writes
// outputs no other piece of the same run writes, so results are bit-identical for any
// executor and any thread count. A worker index selects per-worker scratch memory.
#ifndef TREEGATE_PARALLEL_EXECUTOR_HPP
#define TREEGATE_PARALLEL_EXECUTOR_HPP

#include "../config.hpp"

#include <algorithm>

namespace treegate::parallel {

/// Runs every piece on the calling thread, in order.
struct serial {
    static constexpr int size() noexcept { return 1; }

    template <class F>
    static void run(index_t pieces, F&& fn) {
        for (index_t p = 0; p < pieces; ++p) fn(p, 0);
    }
};

/// Pieces of `total` items cut into chunks of `chunk`: piece p covers [p*chunk, min(total, (p+1)*chunk)).
inline index_t chunk_count(index_t total, index_t chunk) noexcept { return total <= 0 ? 0 : (total + chunk - 1) / chunk; }

/// Runs fn(begin, end, worker) on `ex` for each chunk [begin, end) of [0, total), one piece per
/// chunk: the split depends on `total` and `chunk` only.
template <class Executor, class F>
void for_each_chunk(Executor& ex, index_t total, index_t chunk, F&& fn) {
    ex.run(chunk_count(total, chunk), [&](index_t p, int worker) {
        const index_t begin = p * chunk;
        fn(begin, std::min(total, begin + chunk), worker);
    });
}

}  // namespace treegate::parallel

#endif
