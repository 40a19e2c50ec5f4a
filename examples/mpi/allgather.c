/*
 * The all-gather baseline of the benchmark (examples/bench.rs, --collective-only):
 * MPI_Allgather of `size`-byte blocks, `iters` times after a warm-up, between
 * barriers; rank 0 prints "allgather_us <mean microseconds per call>" (the
 * slowest rank's mean). Run over TCP: mpirun --mca btl tcp,self.
 *
 * Usage: allgather <size> <iters>
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank = 0, n = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    size_t size = argc > 1 ? (size_t)atol(argv[1]) : 8;
    int iters = argc > 2 ? atoi(argv[2]) : 1000;
    char *mine = malloc(size ? size : 1);
    char *all = malloc((size ? size : 1) * (size_t)n);
    memset(mine, rank, size);
    for (int i = 0; i < iters / 10 + 10; i++) MPI_Allgather(mine, (int)size, MPI_BYTE, all, (int)size, MPI_BYTE, MPI_COMM_WORLD);
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < iters; i++) MPI_Allgather(mine, (int)size, MPI_BYTE, all, (int)size, MPI_BYTE, MPI_COMM_WORLD);
    double mean = (MPI_Wtime() - t0) / iters, worst = 0;
    for (int r = 0; r < n; r++)
        if (size && all[(size_t)r * size] != (char)r) {
            fprintf(stderr, "rank %d: wrong block from %d\n", rank, r);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
    MPI_Reduce(&mean, &worst, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (rank == 0) printf("allgather_us %.3f\n", worst * 1e6);
    free(mine);
    free(all);
    MPI_Finalize();
    return 0;
}
