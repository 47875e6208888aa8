// Hash routes (`#/jobs/<id>`): the dashboard is one file under any `dashboard_path`, so the
// server has nothing to route, and a reload or a shared link opens the same view.
export type Route =
  | { view: "overview" }
  | { view: "jobs"; query: URLSearchParams }
  | { view: "job"; id: string }
  | { view: "workflows"; query: URLSearchParams }
  | { view: "workflow"; id: string }
  | { view: "dead-letters"; query: URLSearchParams };

function parse(hash: string): Route {
  const [path = "", search = ""] = hash.replace(/^#/, "").split("?");
  const query = new URLSearchParams(search);
  const parts = path.split("/").filter(Boolean);
  switch (parts[0]) {
    case "jobs":
      return parts[1] ? { view: "job", id: parts[1] } : { view: "jobs", query };
    case "workflows":
      return parts[1] ? { view: "workflow", id: parts[1] } : { view: "workflows", query };
    case "dead-letters":
      return { view: "dead-letters", query };
    default:
      return { view: "overview" };
  }
}

export const router = $state({ route: parse(location.hash) });

window.addEventListener("hashchange", () => {
  router.route = parse(location.hash);
});

/** Goes to `path` (`/jobs?status=failed`), adding a history entry. */
export function go(path: string): void {
  location.hash = `#${path}`;
}

/** Changes the current view's query without a new history entry (filters as they are typed). */
export function replaceQuery(path: string, query: URLSearchParams): void {
  const search = query.toString();
  history.replaceState(null, "", `#${path}${search ? `?${search}` : ""}`);
  router.route = parse(location.hash);
}
