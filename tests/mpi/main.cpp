// Catch2 runner of the MPI tests (tests/mpi/): every rank runs every test case between MPI_Init
// and MPI_Finalize, and the process fails when any rank failed.
#if defined(TREEGATE_CATCH2_V3)
#include <catch2/catch_session.hpp>
#else
#define CATCH_CONFIG_RUNNER
#include "../catch_compat.hpp"
#endif

#include <mpi.h>

int main(int argc, char** argv) {
    MPI_Init(&argc, &argv);
    int failed = Catch::Session().run(argc, argv), worst = 0;
    // A rank whose checks failed makes every rank's exit status say so.
    MPI_Allreduce(&failed, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return worst;
}
