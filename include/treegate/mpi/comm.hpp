// treegate/mpi/comm.hpp — the MPI plumbing of the sharded layers (mpi/): element types, errors
// that every rank raises together, and sums over ranks in a fixed order. Needs mpi.h.
#ifndef TREEGATE_MPI_COMM_HPP
#define TREEGATE_MPI_COMM_HPP

#include "../config.hpp"
#include "../error.hpp"

#include <mpi.h>

#include <climits>
#include <exception>
#include <string>
#include <type_traits>
#include <vector>

namespace treegate::mpi {

/// The MPI type of a float or double.
template <class Scalar>
MPI_Datatype scalar_type() noexcept {
    static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>, "treegate::mpi: float or double");
    return std::is_same_v<Scalar, float> ? MPI_FLOAT : MPI_DOUBLE;
}

inline int comm_rank(MPI_Comm comm) {
    int r = 0;
    MPI_Comm_rank(comm, &r);
    return r;
}

inline int comm_size(MPI_Comm comm) {
    int r = 0;
    MPI_Comm_size(comm, &r);
    return r;
}

namespace collective {

// Which of the library's exceptions a rank caught, so that every rank can raise the same kind.
enum class failure : int { none = 0, shape, config, usage, file, other };

[[noreturn]] inline void raise_as(failure kind, const std::string& what) {
    switch (kind) {
        case failure::shape: throw shape_error(what);
        case failure::config: throw config_error(what);
        case failure::usage: throw usage_error(what);
        case failure::file: throw file_error(what);
        default: throw error(what);
    }
}

}  // namespace collective

/// Runs `checks` on every rank of `comm` and then agrees on the outcome: if any rank threw, the
/// lowest such rank's exception is raised on every rank, same kind and message (prefixed by the
/// rank), so no rank goes on into a collective that a failed rank will never join. Costs one
/// MPI_Allreduce of an int (and a broadcast of the message when something failed). Collective:
/// every rank must call it at the same point.
template <class Checks>
void agree(MPI_Comm comm, Checks&& checks) {
    collective::failure kind = collective::failure::none;
    std::string what;
    try {
        checks();
    } catch (const shape_error& e) {
        kind = collective::failure::shape, what = e.what();
    } catch (const config_error& e) {
        kind = collective::failure::config, what = e.what();
    } catch (const usage_error& e) {
        kind = collective::failure::usage, what = e.what();
    } catch (const file_error& e) {
        kind = collective::failure::file, what = e.what();
    } catch (const std::exception& e) {
        kind = collective::failure::other, what = e.what();
    }
    const int ranks = comm_size(comm), rank = comm_rank(comm);
    int mine = kind == collective::failure::none ? ranks : rank, first = ranks;
    MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm);
    if (first == ranks) return;
    int header[2] = {static_cast<int>(kind), static_cast<int>(what.size())};
    MPI_Bcast(header, 2, MPI_INT, first, comm);
    what.resize(static_cast<std::size_t>(header[1]));
    MPI_Bcast(what.data(), header[1], MPI_CHAR, first, comm);
    collective::raise_as(static_cast<collective::failure>(header[0]), "rank " + std::to_string(first) + " of " +
                                                                  std::to_string(ranks) + ": " + what);
}

/// data[0..n) = the sum over the ranks of their data[0..n), added in rank order 0, 1, ..., R-1 on
/// rank 0 and broadcast: the same bits on every rank and from run to run for a rank count, which
/// MPI_Allreduce does not promise (its reduction order is the implementation's). Collective.
template <class Scalar>
void ordered_sum(MPI_Comm comm, Scalar* data, index_t n, std::vector<Scalar>& scratch) {
    const int ranks = comm_size(comm), rank = comm_rank(comm);
    if (ranks == 1 || n == 0) return;
    treegate::detail::check_config(n <= INT_MAX, "treegate::mpi::ordered_sum: ", n, " values exceed one message (", INT_MAX,
                                   ")");
    const int count = static_cast<int>(n);
    if (rank == 0) scratch.resize(static_cast<std::size_t>(n) * static_cast<std::size_t>(ranks));
    MPI_Gather(data, count, scalar_type<Scalar>(), rank == 0 ? scratch.data() : nullptr, count, scalar_type<Scalar>(), 0,
               comm);
    if (rank == 0)
        for (int r = 1; r < ranks; ++r) {
            const Scalar* part = scratch.data() + static_cast<std::size_t>(r) * static_cast<std::size_t>(n);
            for (index_t i = 0; i < n; ++i) data[i] += part[i];
        }
    MPI_Bcast(data, count, scalar_type<Scalar>(), 0, comm);
}

}  // namespace treegate::mpi

#endif
