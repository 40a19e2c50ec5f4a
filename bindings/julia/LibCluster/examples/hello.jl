# Hello, cluster: start 4 Julia workers, call a function on each, gather the
# answers, and show what a remote error looks like.
#
# Run: scripts/julia --project=bindings/julia/LibCluster bindings/julia/LibCluster/examples/hello.jl

using LibCluster, LibCluster.API   # LibCluster.API: the Distributed names

ids = addprocs(4)
println("started workers ", ids, "; procs() = ", procs())

# Define a function everywhere, then call it on each worker at once.
@everywhere hello(from) = "hello $from, this is worker $(myid()) (pid $(getpid()))"

futures = [remotecall(hello, w, "head") for w in workers()]
for line in fetch.(futures)
    println(line)
end

# The same, gathering a value computed by a closure over local data.
scale = 10
squares = [remotecall_fetch(() -> (myid() * scale)^2, w) for w in workers()]
println("squares: ", squares)

# A remote error comes back as a RemoteException naming the worker.
try
    remotecall_fetch(x -> sqrt(x), 3, -1.0)
catch err
    println("\nremote error, as caught on the head:")
    showerror(stdout, err)
    println("\n(err.pid = ", err.pid, ", err.captured.ex isa ", typeof(err.captured.ex), ")")
end

rmprocs(workers())
println("\nworkers removed; procs() = ", procs())
