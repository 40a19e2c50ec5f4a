# Snippets from the Julia manual's "Multi-processing and Distributed
# Computing" chapter, run with LibCluster: only the `using` line changes
# (`using Distributed` becomes `using LibCluster.API`).
#
# Run: scripts/julia --project=bindings/julia/LibCluster bindings/julia/LibCluster/examples/manual_snippets.jl

using LibCluster.API

addprocs(2)

section(title) = println("\n== ", title)

section("remote references and remote calls")
r = remotecall(rand, 2, 2, 2)                 # a 2x2 random matrix on worker 2
s = @spawnat 2 1 .+ fetch(r)                  # uses r where it lives
println(fetch(s))
println("r[1,1] fetched by worker 2: ", remotecall_fetch(r -> fetch(r)[1, 1], 2, r))

section("@spawnat :any and fetch")
r = @spawnat :any rand(2, 2)
s = @spawnat :any 1 .+ fetch(r)
println(fetch(s))

section("code availability: @everywhere")
@everywhere function rand2(dims...)
    return 2 * rand(dims...)
end
println(fetch(@spawnat :any rand2(2, 2)))

section("data movement: ship the data or the work")
A = rand(1000, 1000)
Bref = @spawnat :any A^2                      # sends A (a global of Main) with the call
println(size(fetch(Bref)))
Bref = @spawnat :any rand(1000, 1000)^2       # builds the matrix remotely
println(size(fetch(Bref)))

section("global variables: sent with the closures that use them")
A = rand(10, 10)
println(remotecall_fetch(() -> sum(A), 2) ≈ sum(A))
A = zeros(10, 10)                             # changed: sent again
println(remotecall_fetch(() -> sum(A), 2))

section("parallel work: counting heads in two halves")
@everywhere function count_heads(n)
    c = 0
    for i = 1:n
        c += rand(Bool)
    end
    c
end
a = @spawnat :any count_heads(10^7)
b = @spawnat :any count_heads(10^7)
println("heads: ", fetch(a) + fetch(b), " of ", 2 * 10^7)

section("@sync waits for every @spawnat inside it")
results = Vector{Any}(undef, 2)
@sync for (i, p) in enumerate(workers())
    @async results[i] = remotecall_fetch(() -> (myid(), gethostname()), p)
end
println(results)

section("errors")
try
    @everywhere error("failure on process $(myid())")
catch e
    # As Distributed: a RemoteException per worker, then this process's
    # failure as a TaskFailedException.
    println(typeof(e), " with ", length(e.exceptions), " failures from processes ",
            [x isa TaskFailedException ? myid() : x.pid for x in e.exceptions])
end

rmprocs(workers())
