"""Benchmark function: an HTML template render (after FunctionBench's
chameleon test): init compiles a page template; each invocation renders a
table of 50 x 20 cells."""
from chameleon import PageTemplate

TEMPLATE = PageTemplate("""\
<html><body><h1>${title}</h1>
<table>
  <tr tal:repeat="row rows">
    <td tal:repeat="cell row">${cell}</td>
  </tr>
</table></body></html>
""")


def handler(event, context):
    rows = [[f"{r}:{c}" for c in range(20)] for r in range(50)]
    html = TEMPLATE(title="thaw", rows=rows)
    return {"bytes": len(html)}
