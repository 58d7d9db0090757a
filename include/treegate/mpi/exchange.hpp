// treegate/mpi/exchange.hpp — the all-to-all exchange of a sharded layer (mpi/): examples to the
// owners of their subtrees and results back into the original order, with its scratch and counts.
#ifndef TREEGATE_MPI_EXCHANGE_HPP
#define TREEGATE_MPI_EXCHANGE_HPP

#include "../config.hpp"
#include "../exec/subtree.hpp"
#include "../workspace.hpp"
#include "comm.hpp"
#include "layout.hpp"

#include <mpi.h>

#include <climits>
#include <cstring>
#include <vector>

namespace treegate::mpi {

/// What the last exchange moved on this rank. Bytes count only what crossed to or from another
/// rank (a rank's examples for its own subtrees stay in memory).
struct exchange_stats {
    index_t examples = 0;        // this rank's examples (columns of its batch)
    index_t received = 0;        // examples whose subtree this rank finished, its own included
    index_t bytes_sent = 0;      // to other ranks, both directions of the exchange
    index_t bytes_received = 0;  // from other ranks, both directions
};

/// Scratch of a sharded layer's calls: the exec engine's workspace and the exchange buffers,
/// grown to the largest batch seen. One per thread that calls the layer; its stats() describe
/// the last call.
template <class Scalar>
struct exchange_workspace {
    workspace<Scalar> local;             // exec engine scratch (codes, schedule, gather buffers)
    std::vector<leaf_t> top_codes;       // codes of the replicated levels (leaf code >> (D - L + 1))
    std::vector<leaf_t> local_codes;     // received examples' codes inside their subtree, sorted order
    scratch_matrix<Scalar> top_output;   // partial path sums of the replicated levels
    scratch_matrix<Scalar> sorted_input;   // received inputs sorted by subtree
    scratch_matrix<Scalar> sorted_output;  // their outputs (the partial sums continued)
    std::vector<index_t> send_order, send_begin, recv_order, subtree_begin;
    std::vector<int> send_counts, send_displs, recv_counts, recv_displs;

    const exchange_stats& stats() const noexcept { return stats_; }
    index_t received() const noexcept { return stats_.received; }

    /// Sends every local example (x, then the partial sum when `top` is given, then its code) to
    /// the rank owning its subtree: MPI_Alltoall of the counts, then one MPI_Alltoallv of whole
    /// columns. Collective; a rank with no examples, or receiving none, still takes part.
    template <class XRef, class TopRef>
    void send(MPI_Comm comm, const layout& lay, const XRef& X, const TopRef* top) {
        const index_t n = X.cols(), in = X.rows(), partial = top != nullptr ? top->rows() : 0;
        const int ranks = lay.ranks();
        const leaf_t* codes = local.codes.data();
        exec::counting_sort(
            n, ranks, [&](index_t e) { return static_cast<index_t>(lay.owner(lay.subtree_of(codes[e]))); }, send_order,
            send_begin);
        rows_ = in + partial + 1;
        auto S = send_.view(rows_, n);
        for (index_t k = 0; k < n; ++k) {
            const index_t e = send_order[static_cast<std::size_t>(k)];
            S.col(k).head(in) = X.col(e);
            if (partial > 0) S.col(k).segment(in, partial) = top->col(e);
            put_code(&S(rows_ - 1, k), codes[e]);
        }
        send_counts.resize(static_cast<std::size_t>(ranks));
        recv_counts.assign(static_cast<std::size_t>(ranks), 0);
        for (int r = 0; r < ranks; ++r)
            send_counts[static_cast<std::size_t>(r)] = static_cast<int>(send_begin[static_cast<std::size_t>(r + 1)] -
                                                                         send_begin[static_cast<std::size_t>(r)]);
        MPI_Alltoall(send_counts.data(), 1, MPI_INT, recv_counts.data(), 1, MPI_INT, comm);
        index_t m = 0;
        for (int c : recv_counts) m += c;
        agree(comm, [&] {
            treegate::detail::check_config(n <= INT_MAX && m <= INT_MAX, "sharded layer: ", n, " local and ", m,
                                           " received examples; one exchange carries at most ", INT_MAX,
                                           " (split the batch)");
        });
        displacements(send_counts, send_displs);
        displacements(recv_counts, recv_displs);
        auto Rv = recv_.view(rows_, m);
        alltoallv(comm, S.data(), send_counts, send_displs, Rv.data(), recv_counts, recv_displs, rows_);
        const int me = lay.rank();
        const index_t own = send_counts[static_cast<std::size_t>(me)];
        stats_ = {n, m, (n - own) * rows_ * index_t(sizeof(Scalar)), (m - own) * rows_ * index_t(sizeof(Scalar))};
    }

    /// Records a call whose n examples all stayed on this rank, the layer's only one (nothing
    /// was packed or sent).
    void keep_local(index_t n) noexcept { stats_ = {n, n, 0, 0}; }

    /// On the owner: the received columns sorted by owned subtree (stable, so by source rank
    /// and then by the source's order), inputs into Xs, partial sums (or zeros) into Bs, codes
    /// inside the subtree into local_codes; subtree t's columns are [subtree_begin[t], [t+1]).
    template <class XsRef, class BsRef>
    void sort_received(const layout& lay, index_t in, index_t partial, XsRef& Xs, BsRef& Bs) {
        const index_t m = received();
        auto Rv = recv_.view(rows_, m);
        std::vector<leaf_t>& codes = top_codes;  // free once the replicated levels have run
        codes.resize(static_cast<std::size_t>(m));
        for (index_t k = 0; k < m; ++k) codes[static_cast<std::size_t>(k)] = get_code(&Rv(rows_ - 1, k));
        const index_t first = lay.first_owned();
        exec::counting_sort(
            m, lay.owned(), [&](index_t k) { return lay.subtree_of(codes[static_cast<std::size_t>(k)]) - first; },
            recv_order, subtree_begin);
        local_codes.resize(static_cast<std::size_t>(m));
        for (index_t k = 0; k < m; ++k) {
            const index_t c = recv_order[static_cast<std::size_t>(k)];
            Xs.col(k) = Rv.col(c).head(in);
            if (partial > 0)
                Bs.col(k) = Rv.col(c).segment(in, partial);
            else
                Bs.col(k).setZero();
            local_codes[static_cast<std::size_t>(k)] = lay.local_code(codes[static_cast<std::size_t>(c)]);
        }
    }

    /// Returns the finished outputs Bs (sorted order) to the ranks the examples came from and
    /// writes them into Y in the original column order: the exchange in reverse. Collective.
    template <class BsRef, class YRef>
    void send_back(MPI_Comm comm, index_t out, const BsRef& Bs, YRef& Y) {
        const index_t m = received(), n = Y.cols();
        auto S = back_.view(out, m);
        for (index_t k = 0; k < m; ++k) S.col(recv_order[static_cast<std::size_t>(k)]) = Bs.col(k);
        auto Rv = recv_.view(out, n);
        alltoallv(comm, S.data(), recv_counts, recv_displs, Rv.data(), send_counts, send_displs, out);
        for (index_t k = 0; k < n; ++k) Y.col(send_order[static_cast<std::size_t>(k)]) = Rv.col(k);
        const index_t own = send_counts[static_cast<std::size_t>(comm_rank(comm))];
        stats_.bytes_sent += (m - own) * out * index_t(sizeof(Scalar));
        stats_.bytes_received += (n - own) * out * index_t(sizeof(Scalar));
    }

private:
    static void displacements(const std::vector<int>& counts, std::vector<int>& displs) {
        displs.resize(counts.size());
        int at = 0;
        for (std::size_t r = 0; r < counts.size(); ++r) displs[r] = at, at += counts[r];
    }

    // Columns of `rows` scalars as one MPI element, so counts and displacements are in
    // examples and stay far from int's limit whatever the layer's width.
    static void alltoallv(MPI_Comm comm, const Scalar* send, const std::vector<int>& sc, const std::vector<int>& sd,
                          Scalar* recv, const std::vector<int>& rc, const std::vector<int>& rd, index_t rows) {
        MPI_Datatype column;
        MPI_Type_contiguous(static_cast<int>(rows), scalar_type<Scalar>(), &column);
        MPI_Type_commit(&column);
        MPI_Alltoallv(send, sc.data(), sd.data(), column, recv, rc.data(), rd.data(), column, comm);
        MPI_Type_free(&column);
    }

    // A leaf code travels in one Scalar slot of its column, as raw bytes.
    static void put_code(Scalar* slot, leaf_t code) noexcept {
        *slot = Scalar(0);
        std::memcpy(slot, &code, sizeof code);
    }
    static leaf_t get_code(const Scalar* slot) noexcept {
        leaf_t code = 0;
        std::memcpy(&code, slot, sizeof code);
        return code;
    }

    index_t rows_ = 0;
    scratch_matrix<Scalar> send_, recv_, back_;
    exchange_stats stats_;
};

/// Examples each rank finished in the last exchange of `ws` (index r: rank r), on every rank:
/// the load imbalance of the routing. Collective (one MPI_Allgather).
template <class Scalar>
std::vector<index_t> examples_per_rank(MPI_Comm comm, const exchange_workspace<Scalar>& ws) {
    std::vector<long long> all(static_cast<std::size_t>(comm_size(comm)));
    long long mine = static_cast<long long>(ws.received());
    MPI_Allgather(&mine, 1, MPI_LONG_LONG, all.data(), 1, MPI_LONG_LONG, comm);
    return std::vector<index_t>(all.begin(), all.end());
}

}  // namespace treegate::mpi

#endif
