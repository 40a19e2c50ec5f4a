// Must NOT compile: the typed helpers refuse types that are not trivially
// copyable (static_assert). Built by ctest with one CLUSTER_FAIL_CASE at a
// time; each build is expected to fail (WILL_FAIL).
#include <cluster.hpp>

#include <string>
#include <vector>

int main() {
    cluster::Cluster c;
#if CLUSTER_FAIL_CASE == 1
    // result type not trivially copyable
    auto s = c.remotecall_fetch_as<std::string>(1, "f", 1);
    (void)s;
#elif CLUSTER_FAIL_CASE == 2
    // argument type not trivially copyable
    int v = c.remotecall_fetch_as<int>(1, "f", std::string("x"));
    (void)v;
#elif CLUSTER_FAIL_CASE == 3
    // handler returning something that is neither bytes nor trivially copyable
    c.register_function("f", [](cluster::Call &) { return std::wstring(L"no"); });
#elif CLUSTER_FAIL_CASE == 4
    // copying an owner
    cluster::Future f = c.remotecall(1, "f");
    cluster::Future g = f;
    (void)g;
#elif CLUSTER_FAIL_CASE == 5
    // pmap over elements that are neither strings nor trivially copyable
    auto r = cluster::pmap<int>(c, "f", std::vector<std::vector<int>>{{1}});
    (void)r;
#elif CLUSTER_FAIL_CASE == 6
    // pmap results of a type that is neither bytes nor trivially copyable
    auto r = cluster::pmap<std::wstring>(c, "f", std::vector<int>{1});
    (void)r;
#elif CLUSTER_FAIL_CASE == 7
    // copying a dict handle
    cluster::Dict d = cluster::Dict::create(c);
    cluster::Dict e = d;
    (void)e;
#elif CLUSTER_FAIL_CASE == 8
    // a dict key that is neither bytes nor trivially copyable
    cluster::Dict d;
    d.set(std::vector<std::string>{"k"}, 1);
#elif CLUSTER_FAIL_CASE == 9
    // a value function returning something that is neither bytes nor trivially copyable
    c.register_value_fn("f", [](cluster::Bytes) { return std::wstring(L"no"); });
#else
#error "set CLUSTER_FAIL_CASE"
#endif
    return 0;
}
